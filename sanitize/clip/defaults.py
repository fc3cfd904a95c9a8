"""The CLIP defaults, in a module that imports nothing, so the embed stage's config (and every command's --help)
can read them without loading torch or open_clip."""

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_BATCH_SIZE = 64  # images per forward pass
DEFAULT_DECODE_WORKERS = 2  # image-decoding processes per model
DEMO_MODEL = "sanitize-demo-clip"  # the demo's small model: architecture and trained weights in resources/models
