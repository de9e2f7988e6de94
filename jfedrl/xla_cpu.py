"""CPU lowering choices that make the jitted round faster to compile and to run.

JAX lowers its Threefry hash (every `jax.random` draw, split and fold-in) on CPU
as a rolled loop of five rounds, to keep small programs quick to compile. In a
federated round it is the opposite: a rollout step draws keys and actions for
every environment, and each rolled hash is an XLA `while` whose every iteration
is a separate kernel launch plus a host-side loop test. In the default config
they are 14 of the round's 19 `while`s, all 18 of `init`'s and 7 of the
evaluation's 8.

The unrolled lowering, which JAX already uses on every other platform, is the
same arithmetic, so draws are bit-identical; XLA fuses it into the
surrounding kernels instead. Measured on 2 cores (bench/throughput_reference.md,
bench/startup.md): the round compiles about a quarter faster and runs faster,
and `init` and the evaluation compile in about half the time.

JAX offers no switch for this, so `unroll_threefry_on_cpu` registers the
unrolled rule for the `cpu` platform through JAX's internal lowering registry.
Where a JAX release lacks those internals it changes nothing and says so in
the debug log: the programs are then slower, never different.
"""

from __future__ import annotations

import logging

log = logging.getLogger("jfedrl")


def unroll_threefry_on_cpu() -> bool:
    """Lowers `threefry2x32` on CPU as straight-line code; True if it was registered.

    Idempotent. Programs lowered before the call keep the rolled loop; their
    values are the same either way.
    """
    try:
        from jax._src import prng
        from jax._src.interpreters import mlir

        primitive = prng.threefry2x32_p
        unrolled = prng._threefry2x32_lowering_rule
    except (ImportError, AttributeError) as error:
        log.debug("threefry stays a rolled loop on CPU (this JAX lacks %s)", error)
        return False
    mlir.register_lowering(primitive, unrolled, platform="cpu")
    return True
