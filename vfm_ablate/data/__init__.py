"""Dataset sources, mask normalisation, resizing, sampling and the synthetic EM generator."""
