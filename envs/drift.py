"""Non-stationary dynamics: drift schedules as pure functions of the round.

A drift maps `(key, base_params, round) -> params` for the batched params of
all clients. It is evaluated inside the jitted round loop with a traced round,
so changing dynamics never recompiles, and `key` is fixed for a run, so a
resumed run sees exactly the same dynamics (Padakandla 2021, "A Survey of
Reinforcement Learning Algorithms for Dynamically Varying Environments",
surveys these piecewise-stationary, drifting and random-walk regimes).

Every schedule is a signal `s(round)`; a drifting parameter becomes

    relative (most params):          base * max(1 + s, 0.05)
    absolute (params with a `drift_ref`, e.g. probabilities whose default is 0):
                                     base + s * drift_ref

clipped to the parameter's physical bounds and rounded for integer params,
after which derived params are recomputed. With `m = magnitude`, `T = period`:

    switch       s = m if (round // T) is odd else 0        (toggles every T rounds)
    linear       s = m * min(round / T, 1)                   (ramp over T rounds, then hold)
    sinusoidal   s = m * sin(2 pi round / T)
    random_walk  s = m * sum_{r=1..round} eps_r / sqrt(T),   eps_r ~ N(0, 1)
                 (independent per client and parameter; std m after T rounds)

Each schedule is a `Drift` in the `DRIFTS` registry: a new one is one
`register_drift` call.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from envs.registry import Registry, did_you_mean
from envs.variants import ParamError

MIN_FACTOR = 0.05
"""Relative drift never shrinks a parameter below 5% of its base (keeps signs)."""

DriftFn = Callable[[jax.Array, Any, jax.Array], Any]
SignalFn = Callable[[jax.Array, jax.Array, int, float, int], jax.Array]
"""`(key, round, period, magnitude, num_clients) -> s(round)` per client, traced round."""


class Drift(NamedTuple):
    """A named drift schedule: its signal `s(round)` (None: nothing drifts)."""

    name: str
    signal: SignalFn | None
    description: str = ""


DRIFTS: Registry[Drift] = Registry("drift", "env.drift", "jfedrl.drifts")
"""Every drift schedule by name; a new one is one `register_drift` call."""


def register_drift(name: str, signal: SignalFn | None, description: str) -> Drift:
    """Registers drift `name` (see `Drift`); a `ValueError` if it exists."""
    return DRIFTS.register(name, Drift(name, signal, description))


def _switch(key, t, period, magnitude, num):
    on = (t // period) % 2 == 1
    return jnp.full((num,), jnp.where(on, magnitude, 0.0), jnp.float32)


def _linear(key, t, period, magnitude, num):
    frac = jnp.minimum(t.astype(jnp.float32) / period, 1.0)
    return jnp.full((num,), magnitude * frac, jnp.float32)


def _sinusoidal(key, t, period, magnitude, num):
    phase = 2.0 * jnp.pi * (t % period).astype(jnp.float32) / period
    return jnp.full((num,), magnitude * jnp.sin(phase), jnp.float32)


def _random_walk(key, t, period, magnitude, num):
    def add(r, total):
        return total + jax.random.normal(jax.random.fold_in(key, r), (num,))

    walk = jax.lax.fori_loop(1, t + 1, add, jnp.zeros((num,), jnp.float32))
    return magnitude * walk / jnp.sqrt(float(period))


register_drift("none", None, "stationary dynamics")
register_drift("switch", _switch, "m in odd periods, 0 in even ones")
register_drift("linear", _linear, "ramp to m over T rounds, then hold")
register_drift("sinusoidal", _sinusoidal, "m sin(2 pi round / T)")
register_drift("random_walk", _random_walk, "Gaussian walk, std m after T rounds")


def signal(
    kind: str, key: jax.Array, round_index: jax.Array, period: int, magnitude: float, num: int
) -> jax.Array:
    """The schedule `s(round)` for `num` clients (see the module docstring)."""
    fn = DRIFTS.get(kind).signal
    if fn is None:
        return jnp.zeros((num,), jnp.float32)
    return fn(key, jnp.asarray(round_index, jnp.int32), period, magnitude, num)


def resolve_drift_params(name: str, kind: str, params: Sequence[str] = ()) -> tuple[str, ...]:
    """The params that drift for `name` (the env's default set if `params` is empty).

    Raises:
        ParamError: for unknown or non-driftable params, or when a drift is
            requested and nothing would drift.
    """
    import envs

    entry = envs.spec(name)
    if kind not in DRIFTS:
        allowed = DRIFTS.names()
        raise ParamError(
            "drift",
            f"{kind!r} is not allowed; allowed: {', '.join(allowed)}."
            + did_you_mean(kind, allowed),
        )
    drifts = DRIFTS.get(kind).signal is not None
    driftable = [t.name for t in entry.tunables if t.driftable]
    listing = ", ".join(driftable) if driftable else "none"
    for p in params:
        if p not in driftable:
            raise ParamError(
                "drift_params",
                f"{p!r} cannot drift in {name}; driftable params: {listing}."
                + did_you_mean(p, driftable),
            )
    chosen = tuple(params) or entry.drift_params
    if drifts and not chosen:
        raise ParamError(
            "drift_params",
            f"{name} has no default drifting params; choose some of: {listing}",
        )
    return chosen if drifts else ()


def make_drift(
    name: str,
    kind: str = "none",
    period: int = 10,
    magnitude: float = 0.5,
    params: Sequence[str] = (),
) -> DriftFn:
    """Builds the pure drift `(key, base_params, round) -> params` for `name`.

    Args:
        name: registered environment.
        kind: a registered drift (`DRIFTS`).
        period: rounds per switch / sinusoid period / ramp length / unit of the
            random walk's variance (>= 1).
        magnitude: size of the drift relative to each client's base value (or
            in units of the param's `drift_ref`).
        params: which tunable params drift (empty: the env's default set).

    Returns:
        A function of batched params (leading client axis) and a (traced) round.
    """
    import envs

    if int(period) < 1:
        raise ParamError("drift_period", f"must be >= 1, got {period}")
    chosen = resolve_drift_params(name, kind, params)
    entry = envs.spec(name)
    tunables = [entry.tunable(p) for p in chosen]

    if not chosen:  # `none`, or a drift without a signal

        def no_drift(key, base_params, round_index):
            del key, round_index
            return base_params

        return no_drift

    def drift(key, base_params, round_index):
        updates = {}
        for t in tunables:
            base = getattr(base_params, t.name)
            param_key = jax.random.fold_in(key, zlib.crc32(t.name.encode()) & 0x7FFFFFFF)
            s = signal(kind, param_key, round_index, period, magnitude, base.shape[0])
            s = s.reshape(s.shape + (1,) * (base.ndim - 1))
            base_f = base.astype(jnp.float32)
            if t.drift_ref is None:
                value = base_f * jnp.maximum(1.0 + s, MIN_FACTOR)
            else:
                value = base_f + s * t.drift_ref
            value = jnp.clip(value, t.bounds[0], t.bounds[1])
            updates[t.name] = (jnp.round(value) if t.integer else value).astype(base.dtype)
        return jax.vmap(entry.derive)(base_params.replace(**updates))

    return drift
