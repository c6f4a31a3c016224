"""Benchmarks and reports (installed as ``emgkey.benchmarks``)."""
