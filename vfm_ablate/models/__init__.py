"""Backbones (registry), the study's segmentation head, LoRA, and the assembled segmenter."""
