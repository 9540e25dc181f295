"""Latency reports for the vision node: ``python -m benchmarks --help``. Never imported by the node."""
