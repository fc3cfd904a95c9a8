"""The names the labeling workflow offers (strategies, audit designs), in a module that imports nothing heavy, so
the command line can list them as choices without loading scikit-learn."""

UNCERTAINTY_STRATEGIES = ("uncertainty", "margin", "entropy", "ranked_batch", "committee")
STRATEGIES = (*UNCERTAINTY_STRATEGIES, "flagged", "missed_neighbours", "random")  # how later rounds choose rows
COLD_START = "prompts"  # the first round, before a classifier exists: zero-shot prompts
AUDIT_STRATEGIES = ("random", "stratified")  # designs of a random audit sample
