"""The cost model of a sweep: what each trial computes (workload), how many epochs it runs (epochs), what that
costs from a calibration (estimate), and how trials pack onto a cluster (packing)."""
