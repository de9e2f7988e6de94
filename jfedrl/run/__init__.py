"""The run loop and what it writes: blocks of rounds, callbacks, checkpoints, logs.

Also the process plumbing a run needs: host devices, `jax.distributed`, signals,
the XLA stderr filter, the experiment trackers, and the opt-in process
settings (`startup.prepare_process`).
"""
