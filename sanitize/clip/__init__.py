"""The CLIP model: offline loading of open_clip models and the per-shard embedding core."""
