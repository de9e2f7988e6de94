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
surrounding kernels instead, so the round, `init` and the evaluation compile
and run faster (bench/throughput_reference.md, bench/startup.md).

JAX offers no switch for this, so `unroll_threefry_on_cpu` registers the
unrolled rule for the `cpu` platform through JAX's internal lowering registry.
That changes the whole process, so importing jfedrl does not call it:
`jfedrl.run.startup.prepare_process` does, for the processes jfedrl runs.
The rule lives in `jax._src.prng` up to jax 0.9 and in
`jax._src.random.threefry2x32` from jax 0.10 on; both are tried. Where a JAX
release has neither, it changes nothing and says so in one log line: the
programs are then slower, never different.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger("jfedrl")

#: Where JAX keeps the Threefry primitive and its unrolled lowering, newest first.
THREEFRY_MODULES = ("jax._src.random.threefry2x32", "jax._src.prng")


def unroll_threefry_on_cpu() -> bool:
    """Lowers `threefry2x32` on CPU as straight-line code; True if it was registered.

    Idempotent. Programs lowered before the call keep the rolled loop; their
    values are the same either way.
    """
    errors = []
    for name in THREEFRY_MODULES:
        try:
            module = importlib.import_module(name)
            from jax._src.interpreters import mlir

            primitive = module.threefry2x32_p
            unrolled = module._threefry2x32_lowering_rule
        except (ImportError, AttributeError) as error:
            errors.append(f"{name}: {error}")
            continue
        mlir.register_lowering(primitive, unrolled, platform="cpu")
        return True
    log.info("threefry stays a rolled loop on CPU (this JAX lacks %s)", "; ".join(errors))
    return False
