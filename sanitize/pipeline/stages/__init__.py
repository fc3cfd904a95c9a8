"""Stage runners: each reads a run folder (or manifest), calls a numeric core, writes row-aligned sidecars."""
