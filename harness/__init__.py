"""phonehome: gate Android builds on whether a phone sends its identifiers in the clear."""

__version__ = "0.1.0"
