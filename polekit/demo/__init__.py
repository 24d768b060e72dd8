"""``polekit demo``: a whole emulated street, end to end, in a minute (docs/quickstart.md)."""
