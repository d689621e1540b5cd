"""MLflow tracking: the store (one tracking-URI rule, safe local SQLite) and the runs of a sweep and its trials."""
