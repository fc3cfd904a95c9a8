"""Data generators for tests and benchmarks: real-layout fixtures, synthetic embeddings."""
