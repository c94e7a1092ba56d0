"""Benchmarks: ``python -m tools.bench --scale 3`` (main.py) and the focused ones (group, pack, s3)."""
