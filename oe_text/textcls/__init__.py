"""Text classifiers with OE: named sets and the user's files, outlier corpora, the GRU, the pipeline, pinned Hub checkpoints."""
