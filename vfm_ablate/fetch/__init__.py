"""Getting a sweep's inputs onto disk before launch: the built-in datasets' public sources (`sources`, `datasets`),
pretrained weights in the libraries' own caches (`weights`), and the offline-readiness check (`readiness`)."""
