"""Reading and writing: manifests, embeddings, images, the run folder, atomic writes."""
