"""phonehome policy layer."""
