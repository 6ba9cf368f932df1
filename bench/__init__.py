"""Benchmarks; each script under bench/<name>/run.py runs from the repository root."""
