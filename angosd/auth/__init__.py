"""Identity extraction and access decisions."""
