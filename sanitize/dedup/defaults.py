"""The defaults of `find_duplicates`, in a module that imports nothing, so the dedup stage's config (and every
command's --help) can read them without loading FAISS or SciPy."""

DEFAULT_THRESHOLD = 0.95  # cosine at or above which two rows are near-duplicates
DEFAULT_CLUSTERINGS = 5  # k-means clusterings whose candidate pairs are united
DEFAULT_RECALL_SAMPLE = 1000  # rows searched exhaustively for the recall estimate (0: none)
KEEP_POLICIES = ("max", "min")  # which end of the keep-by column wins in a group
DEFAULT_KEEP = "max"
