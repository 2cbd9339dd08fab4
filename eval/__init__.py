"""Benchmark, profiler, reports and the comparison table."""
