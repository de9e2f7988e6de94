"""Process-wide settings a jfedrl process opts into; importing jfedrl changes none of them.

Two settings make a run start and compile faster without changing a number it
computes, yet each reaches beyond jfedrl: `defer_plotting` puts stand-ins in
`sys.modules`, `use_fast_cpu_lowering` registers a CPU lowering in JAX's
registry. A library must not do either on import, so the entry points that own
their process call `prepare_process` (the `jfedrl` command, `jfedrl.run.runner.train`,
`jfedrl.experiments.sweep.run_sweep`, the offload worker, the test suite), and a
script that builds a simulator itself may call it first.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

#: Imported by gymnax at import (its Pong and Catch renderers) yet used only when
#: something draws: seaborn (it pulls in scipy.stats) and pyplot, seconds of
#: start-up together. Until first used they are stand-ins that import the real
#: module on their first attribute access, so a run that never draws with them
#: never pays (`python -X importtime -c "import jfedrl.run.runner"`).
DEFERRED_MODULES = ("seaborn", "matplotlib.pyplot")


class _Deferred(types.ModuleType):
    """Stands in for a module until an attribute is read, then imports and forwards.

    Not `importlib.util.LazyLoader`: on Python 3.11 the import system reads
    `__spec__` of a module found in `sys.modules`, which would load it at once.
    """

    def __getattr__(self, attr: str):
        real = self.__dict__.get("_real")
        if real is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = importlib.import_module(self.__name__)
            self.__dict__["_real"] = real
        return getattr(real, attr)


def _defer(name: str) -> None:
    """Puts a stand-in for `name` in `sys.modules`, unless it is loaded or not installed."""
    # The top-level package only: finding `matplotlib.pyplot` would import matplotlib.
    if name in sys.modules or importlib.util.find_spec(name.split(".")[0]) is None:
        return
    sys.modules[name] = _Deferred(name)


def defer_plotting() -> None:
    """Puts stand-ins for `DEFERRED_MODULES` in `sys.modules` until first used.

    Idempotent: a module already loaded (or already a stand-in) is left as it is,
    and one that is not installed gets none. Call it before gymnax is imported
    (the environments import it) for it to save anything.
    """
    for name in DEFERRED_MODULES:
        _defer(name)


def use_fast_cpu_lowering() -> bool:
    """Lowers JAX's Threefry hash on CPU as straight-line code; True if registered.

    The same draws, bit for bit, in fewer XLA loops (`jfedrl/round/xla_cpu.py`).
    Imports jax (not its backends). Idempotent; programs lowered before the
    call keep the rolled loop.
    """
    from jfedrl.round.xla_cpu import unroll_threefry_on_cpu

    return unroll_threefry_on_cpu()


def prepare_process(lowering: bool = True) -> None:
    """`defer_plotting`, then `use_fast_cpu_lowering`: what a jfedrl process runs with.

    Idempotent, and safe before or after `configure_host_devices` (neither
    starts a JAX backend).

    Args:
        lowering: also register the fast CPU lowering. False leaves jax
            unimported, for a command that never compiles (`jfedrl config`).
    """
    defer_plotting()
    if lowering:
        use_fast_cpu_lowering()
