"""Benchmarks of speed and quality; run ``python -m bench.<name>`` from the repository root."""
