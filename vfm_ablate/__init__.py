"""vfm-ablate: declarative, resumable, tracked ablation sweeps of vision foundation models for EM segmentation."""

__version__ = "0.1.0"
