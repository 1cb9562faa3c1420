"""phonehome device layer."""
