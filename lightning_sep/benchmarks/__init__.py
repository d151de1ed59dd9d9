"""Benchmarks (``make bench``): numbers for BENCHMARKS.md, never timed assertions in tests."""
