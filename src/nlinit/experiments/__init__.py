"""Experiments built on the library: comparisons, the demo, benchmarks' shared parts."""
