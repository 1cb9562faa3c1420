"""Device profiles (one YAML file per device or SKU), shipped as package data `harness.devices`."""
