"""Fault injection for tests: a hook the worker calls at each stage of a task.

The worker calls `hook(stage, task, value)` at fixed points and goes on with
what it returns; in production the hook is `no_faults`, which returns `value`.
Tests install faults through `$JFEDRL_FAULT` (the local executor forwards the
requestor's current value with every request, so long-lived workers follow
it)::

    JFEDRL_FAULT="kind[:shard=S,attempt=A,round=R,op=O][;...]"

with kinds `crash`, `hang` (after compiling), `stall` (before restoring),
`corrupt`, `truncate`, `missing`, `nan` (one client), `shape`, `dtype`,
`wrong_round`, `wrong_clients`, `wrong_params` (plausible but wrong: every
param off by 0.1 %, finite, well-formed: what only replication catches);
`shard` and `round` default to any, `attempt` to 0 (so a retry succeeds);
`*` means any. Faults hit training tasks, unless `op=fetch` (the state
fetches before a checkpoint) or `op=*`.

Stages and their values: `start` (None, before restoring), `compiled` (None),
`params` (the new params tree), `result` (the flat result arrays), `saved`
(None, after the arrays are written), `report` (the `Report`), `written` (the
result folder, after the digests).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FAULT_ENV = "JFEDRL_FAULT"
FAULT_KINDS = (
    "crash",
    "hang",
    "stall",
    "corrupt",
    "truncate",
    "missing",
    "nan",
    "shape",
    "dtype",
    "wrong_round",
    "wrong_clients",
    "wrong_params",
)

#: `(stage, task header, value) -> value`: what the worker calls at each stage.
FaultHook = Callable[[str, Any, Any], Any]


def no_faults(stage: str, task: Any, value: Any) -> Any:
    """The production hook: changes nothing."""
    del stage, task
    return value


@dataclass(frozen=True)
class Fault:
    """One injected fault: which kind, for which shard / attempt / round (None: any)."""

    kind: str
    shard: int | None = None
    attempt: int | None = 0
    round: int | None = None
    op: str | None = "train"
    """The task kind it hits: `train`, `fetch` (None: any)."""

    def matches(self, task: Any) -> bool:
        """Whether this fault hits `task` (a `TaskHeader`, or a dict in tests)."""
        fields = task if isinstance(task, dict) else dataclasses.asdict(task)
        if self.op is not None and fields.get("op", "train") != self.op:
            return False  # by default faults hit training tasks, not state fetches
        return all(
            want is None or want == fields.get(name)
            for name, want in (
                ("shard", self.shard),
                ("attempt", self.attempt),
                ("round", self.round),
            )
        )


def parse_faults(text: str) -> list[Fault]:
    """Parses `$JFEDRL_FAULT` (see the module docstring)."""
    faults = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        kind, _, filters = item.partition(":")
        if kind not in FAULT_KINDS:
            allowed = ", ".join(FAULT_KINDS)
            raise ValueError(f"{FAULT_ENV}: unknown fault {kind!r}; allowed: {allowed}")
        fields: dict[str, Any] = {}
        for pair in filter(None, filters.split(",")):
            key, _, value = pair.partition("=")
            if key not in ("shard", "attempt", "round", "op"):
                raise ValueError(
                    f"{FAULT_ENV}: unknown filter {key!r}; allowed: shard, attempt, round, op"
                )
            if key == "op" and value not in ("train", "fetch", "*"):
                raise ValueError(f"{FAULT_ENV}: op={value!r}; allowed: train, fetch, *")
            fields[key] = None if value == "*" else value if key == "op" else int(value)
        faults.append(Fault(kind, **fields))
    return faults


def hook_for(spec: str | None) -> FaultHook:
    """The hook for a fault spec (None: `$JFEDRL_FAULT`); `no_faults` when it is empty."""
    spec = os.environ.get(FAULT_ENV, "") if spec is None else spec
    faults = parse_faults(spec)
    if not faults:
        return no_faults

    def hook(stage: str, task: Any, value: Any) -> Any:
        kind = next((fault.kind for fault in faults if fault.matches(task)), None)
        return value if kind is None else _inject(kind, stage, value)

    return hook


def _inject(kind: str, stage: str, value: Any) -> Any:
    """`value` after fault `kind` at `stage` (most faults act at one stage only)."""
    if (kind, stage) in (("stall", "start"), ("hang", "compiled")):
        _hang()
    if (kind, stage) == ("crash", "saved"):
        os._exit(17)  # after a partial write, like a killed provider
    if (kind, stage) == ("nan", "params"):  # one client diverged
        import jax

        return jax.tree.map(lambda x: np.concatenate([np.full_like(x[:1], np.nan), x[1:]]), value)
    if (kind, stage) == ("wrong_params", "params"):  # a lazy or malicious provider
        import jax

        return jax.tree.map(lambda x: (np.asarray(x) * (1 + 1e-3)).astype(x.dtype), value)
    if stage == "result" and kind in ("shape", "dtype"):
        name = sorted(k for k in value if k.startswith("params/"))[0]
        array = value[name]
        value = dict(value)
        if kind == "shape":
            value[name] = np.concatenate([array, array[:1]])
        else:
            value[name] = array.astype(np.float64)
        return value
    if (kind, stage) == ("wrong_round", "report"):
        return dataclasses.replace(value, round=value.round + 1)
    if (kind, stage) == ("wrong_clients", "report"):
        return dataclasses.replace(value, client_ids=tuple(i + 1 for i in value.client_ids))
    if stage == "written" and kind in ("corrupt", "truncate", "missing"):
        _damage(value, kind)
    return value


def _hang() -> None:
    """Sleeps until killed, or until the parent (the requestor) is gone."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(3)


def _damage(out: Path, kind: str) -> None:
    """Transfer damage to the largest state file, after the digests were written."""
    from offload.archive import list_files

    files = sorted(rel for rel in list_files(out) if rel.startswith("state/"))
    victim = out / max(files, key=lambda rel: (out / rel).stat().st_size)
    if kind == "missing":
        victim.unlink()
    elif kind == "truncate":
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])
    else:
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
