"""phonehome capture layer."""
