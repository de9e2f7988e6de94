"""Benchmarks and tools run from the repository root, e.g. `python -m scripts.bench_envs`."""
