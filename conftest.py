"""Root conftest: the plugin itself is registered by the `pytest11` entry point, never here."""
