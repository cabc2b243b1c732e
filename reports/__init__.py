"""Reports from a results store: CSV exports (and, later, HTML comparison reports)."""
