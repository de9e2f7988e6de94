"""jfedrl: a JAX-accelerated, vectorized simulator for federated reinforcement learning.

Importing it changes nothing in the process; `jfedrl.run.startup.prepare_process`
opts into the process-wide start-up settings.
"""

__version__ = "0.1.0"
