"""jfedrl: a JAX-accelerated, vectorized simulator for federated reinforcement learning."""

__version__ = "0.1.0"
