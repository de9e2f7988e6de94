"""Helpers of `python -m scripts.bench_vs_peers`: one module per compared system.

Each system runs in its own process (so peak memory and imports do not mix)
and returns a plain JSON-able dict built by `common.result`. The modules only
import their heavy dependencies (jax, torch, flwr) inside `run`, so the Flower
side can run in an interpreter that has no jax.
"""
