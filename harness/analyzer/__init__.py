"""phonehome analyzer layer."""
