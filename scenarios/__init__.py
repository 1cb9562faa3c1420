"""The gate: scenarios users run against their phones (`pytest --device SERIAL`)."""
