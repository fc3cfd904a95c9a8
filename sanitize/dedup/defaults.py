"""The defaults of `find_duplicates`, in a module that imports nothing, so the dedup stage's config (and every
command's --help) can read them without loading FAISS or SciPy."""

DEFAULT_THRESHOLD = 0.95  # cosine at or above which two rows are near-duplicates
DEFAULT_CLUSTERINGS = 5  # k-means clusterings whose candidate pairs are united
DEFAULT_RECALL_SAMPLE = 1000  # rows searched exhaustively for the recall estimate (0: none)
DEFAULT_BLOCK_ROWS = 4096  # rows per block of a cluster's pair search (a giant cluster is searched block by block)
DEFAULT_POINTS_PER_CENTROID = 32  # k-means trains on at most this many sampled rows per cluster
DEFAULT_KMEANS_ITERATIONS = 10
DEFAULT_CLUSTERING_DIMS = 128  # principal directions the clusterings run in (None: all); pairs use every dimension
KEEP_POLICIES = ("max", "min")  # which end of the keep-by column wins in a group
DEFAULT_KEEP = "max"
