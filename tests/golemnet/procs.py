"""Process bookkeeping for the PROTOCOL-LEVEL test network.

Everything the harness starts carries a marker in its environment
(`GOLEMNET_PROVIDER`, `GOLEMNET_ACTIVITY`); environments are inherited through
fork, `setsid` and exec, so even a double-forked daemon started by a command
is found here and killed with its activity or provider.
"""

from __future__ import annotations

import os
import signal


def marked_pids(key: str, value: str) -> list[int]:
    """Pids of processes whose environment has `key=value` (never this process)."""
    if not value:
        return []
    needle = f"{key}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
        except OSError:
            continue
        if needle in environ:
            found.append(int(entry))
    return found


def kill_marked(key: str, value: str, sig: int = signal.SIGKILL) -> list[int]:
    pids = marked_pids(key, value)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return pids
