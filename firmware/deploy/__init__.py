"""Field tooling: build a deployable bundle, flash MicroPython, deploy and self-test the node
firmware, provision boards in batches (docs/field-guide.md)."""
