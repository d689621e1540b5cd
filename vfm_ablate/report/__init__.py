"""Reports from the tracking store: runs read back, paper-style tables, figures, and the report folder."""
