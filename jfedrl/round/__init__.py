"""The jitted federated round: client environments, local training, aggregation.

`simulator.make_simulator(config)` builds a `Simulator`, whose `init`, `run_block`
and `evaluate` are the jitted programs every runner and offload worker calls.
"""
