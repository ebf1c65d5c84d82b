"""Benchmarks and the chaos soak; `bench.harness` also serves the machine-level tests."""
