"""The pipeline: its config, the stage contract, the runner, and the stages."""
