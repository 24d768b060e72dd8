"""Northbound platform dialects: one module per platform."""
