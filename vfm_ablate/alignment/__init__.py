"""Domain-alignment methods, each a plain function or torch module with no knowledge of trials: input level
(`intensity`: histogram matching, per-dataset z-scoring, CLAHE), feature level (`standardise`: per-dataset
standardisation of patch tokens) and loss level (`losses`: Gaussian-kernel MMD, CORAL, gradient reversal + domain
classifier). The trial engine (`trial/alignment.py`) wires them into a trial; docs/alignment.md defines each one
with its reference."""
