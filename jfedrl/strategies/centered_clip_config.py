"""The `centered_clip` strategy's config section and its checks (no JAX here).

Imports no jax, so that the config tree, `--help` and the docs generator can
read it; the maths is `jfedrl.strategies.centered_clip`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jfedrl.schema.checks import require, require_choice
from jfedrl.schema.fields import param
from jfedrl.strategies.spec import StrategySpec

PATH = "strategy.centered_clip."
"""Where the section's fields live in the config tree (the prefix of every error)."""

#: `strategy.centered_clip.start`: where the clipping iterations start.
STARTS = ("global", "previous_update")


@dataclass(frozen=True)
class CenteredClipConfig:
    """Centred clipping (Karimireddy, He & Jaggi 2021)."""

    tau: float = param(1.0, traceable=True)
    """Clipping radius tau (> 0), in the params' units: each step moves the centre by the
    mean of the updates' differences from it, each clipped to L2 norm tau."""
    iterations: int = param(3, static_reason="sets the number of clipping steps (a loop)")
    """Clipping steps L, a fixed count (>= 1); the paper finds L = 1 enough when the
    start is good (its history), and a few steps help from a cold start."""
    start: str = "global"
    """The first centre v_0: `global` (no update: the previous global params) or
    `previous_update` (last round's aggregate update, the paper's use of history;
    kept in the server state)."""


def validate(section: CenteredClipConfig, prefix: str = PATH) -> None:
    """Checks the section; raises `ConfigError` naming `<prefix><field>`.

    Args:
        section: the fields to check.
        prefix: the dotted path of the section in the config tree, with its final dot.
    """
    require(section.tau > 0, f"{prefix}tau", "> 0", section.tau)
    iterations = section.iterations
    ok = isinstance(iterations, int) and not isinstance(iterations, bool) and iterations >= 1
    require(ok, f"{prefix}iterations", "an integer >= 1", iterations)
    require_choice(f"{prefix}start", section.start, STARTS)


def check(config: Any) -> None:
    """`validate` on the whole config's `strategy.centered_clip`."""
    validate(config.strategy.centered_clip)


SPECS = (
    StrategySpec(
        "centered_clip",
        "jfedrl.strategies.centered_clip:build",
        check,
        CenteredClipConfig,
        "centred clipping of the updates around an iterated centre (Karimireddy 2021)",
    ),
)
