"""Ctrl-C and SIGTERM at any moment of a run, start-up included.

`install` runs first in the CLI, before anything imports JAX. Until the run's
training loop takes over (`jfedrl.run.callbacks.StopOnCtrlC`: the first signal
finishes the block and checkpoints), a Ctrl-C raises `KeyboardInterrupt` and a
SIGTERM (what SLURM and Kubernetes send before they kill) raises `Terminated`;
the CLI turns them into one line and exit 130 or 143 (128 + the signal).

Python runs a signal's handler in whatever Python frame is executing. Two
places must not get the exception: a garbage-collector callback (JAX registers
one, `_xla_gc_callback`) or a `__del__` finalizer, where it is printed as
"Exception ignored in ..." and dropped, so the run would go on; and an import
in progress, where it leaves half-initialised modules behind (NumPy's C core
then refuses to load again, or the process crashes). `interrupt` notices those
frames and delivers the signal again once they have returned.

No JAX import here: the CLI imports this module before the host device flags
are set.
"""

from __future__ import annotations

import _thread
import gc
import signal
import threading
from types import FrameType

#: Exit codes: 128 + the signal number, what a shell reports for a process it ended.
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM

#: Seconds after which a signal that arrived inside a gc callback is delivered again.
REDELIVER_SECONDS = 0.01


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stop like Ctrl-C (a `KeyboardInterrupt`, so every cleanup runs)."""


def name(signum: int) -> str:
    """`Ctrl-C` for SIGINT, else the signal's name (`SIGTERM`)."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def unsafe_frame(frame: FrameType | None) -> bool:
    """Whether an exception raised in `frame` would be dropped or break an import: a gc
    callback, a `__del__` finalizer or an import anywhere up the stack.
    """
    callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        code = frame.f_code
        if code in callbacks or code.co_name == "__del__":
            return True
        if code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def deliver_later(signum: int) -> None:
    """Calls the handler of `signum` again in the main thread, in a moment."""
    timer = threading.Timer(REDELIVER_SECONDS, _thread.interrupt_main, args=(signum,))
    timer.daemon = True
    timer.start()


def interrupt(signum: int, frame: FrameType | None) -> None:
    """The start-up handler: raises `KeyboardInterrupt` (`Terminated` for SIGTERM), or
    delivers the signal again where raising is unsafe (`unsafe_frame`).
    """
    if unsafe_frame(frame):
        deliver_later(signum)
        return
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def install() -> None:
    """Handles SIGINT and SIGTERM with `interrupt` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
