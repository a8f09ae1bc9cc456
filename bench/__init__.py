"""Benchmarks: `python -m bench NAME` prints a markdown table (no assertions)."""
