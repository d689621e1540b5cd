"""Domain-mismatch diagnostics: the measures (FD, probe, MMD, PCA), dataset embeddings, the standalone run."""
