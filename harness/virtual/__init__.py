"""phonehome virtual layer."""
