"""Policy: the activation-client catalog (`catalog`), endpoint, country and installed-package rules
(`policy`), and offline IP-to-country lookups (`geoip`). Device profiles approve catalog entries
for their market (`harness.profile`)."""
