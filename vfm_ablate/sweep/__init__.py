"""Sweeps on Ray Tune: sweep-file schema (spec), expansion (plan), dry-run text (describe), the driver, the Ray
trainable (its config encoded and decoded in one place), durable trial records (store), progress and results."""
