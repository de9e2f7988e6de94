"""jfedrl: a JAX-accelerated, vectorized simulator for federated reinforcement learning."""

import importlib
import importlib.util
import sys
import types

__version__ = "0.1.0"

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


for _name in DEFERRED_MODULES:
    _defer(_name)
