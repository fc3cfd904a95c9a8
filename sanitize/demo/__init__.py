"""The offline demo: a generated sample and a scripted run of the whole pipeline."""
