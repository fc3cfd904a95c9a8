"""The stages of the pipeline, one module each: a `Stage` subclass, its config dataclass and its per-shard worker.
The order they run in is `sanitize.pipeline.registry.STAGES`."""
