"""Heterogeneous clients: each client's physical parameters drawn from a key.

Named variants in the spirit of Packer et al. 2018, "Assessing Generalization
in Deep Reinforcement Learning" (arXiv:1810.12282, Table 1):

- `default`: every client gets the environment's default params;
- `random`: each tunable parameter uniform in a range around its default;
- `extreme`: each tunable parameter uniform on a union of ranges *outside*
  the `random` range (an interval is picked with probability proportional to
  its width, so the density is uniform over the union).

Users can override the range of any tunable parameter (`ranges`) or give
explicit per-client values (`values`). Sampling is a pure function of the key:
parameter `p` draws from `fold_in(key, crc32(p))`, so adding a parameter to a
range override never changes another parameter's draws. Derived parameters
(CartPole's `total_mass`, `polemass_length`, ...) are recomputed from their
sources by the environment's `derive` after every sample.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs.registry import Registry, did_you_mean

Interval = tuple[float, float]


class ParamError(ValueError):
    """A bad variant / range / value / drift setting for an environment.

    `field` names the argument (`variant`, `ranges`, `values`, `drift_params`,
    ...), so the config layer can report `env.<field>`.
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Tunable(NamedTuple):
    """A physical parameter that may differ across clients and drift over rounds."""

    name: str
    random: Interval
    """Range of the `random` variant (contains the default)."""
    extreme: tuple[Interval, ...] = ()
    """Union of ranges of the `extreme` variant (outside `random`); empty: as `random`."""
    integer: bool = False
    """Integer-valued (sampled uniformly over the integers of the ranges)."""
    bounds: Interval = (0.0, math.inf)
    """Physically valid values; overrides must lie inside, drift is clipped to them."""
    drift_ref: float | None = None
    """Drift unit for params whose natural value is 0 (probabilities, densities):
    drift is then additive, `base + s * drift_ref`; None: relative, `base * (1 + s)`."""
    driftable: bool = True
    """False for labels (seeds, cell indices) where a relative drift means nothing."""
    doc: str = ""
    clusters: tuple[float, ...] = ()
    """The `clustered` variants' value per group (cycled over the groups), e.g. CartPole's
    `force_mag` (10, -10): odd groups push the other way (mirrored actions). Empty: the
    groups sit at evenly spaced points over the `extreme` span."""


def _param_key(key: jax.Array, name: str) -> jax.Array:
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def sample_intervals(
    key: jax.Array, intervals: Sequence[Interval], num: int, integer: bool = False
) -> jax.Array:
    """`num` draws uniform over the union of disjoint `intervals`.

    One uniform draw on [0, total width) is mapped piecewise onto the intervals,
    so each interval is hit with probability proportional to its width (its
    number of integers when `integer`).
    """
    lows = np.array([lo for lo, _ in intervals], np.float64)
    highs = np.array([hi for _, hi in intervals], np.float64)
    if integer:
        lows, highs = np.ceil(lows), np.floor(highs)
        widths = highs - lows + 1.0
        u = jax.random.randint(key, (num,), 0, int(widths.sum())).astype(jnp.float32)
    else:
        widths = highs - lows
        u = jax.random.uniform(key, (num,), minval=0.0, maxval=float(widths.sum()))
    ends = jnp.asarray(np.cumsum(widths), jnp.float32)
    index = jnp.minimum(jnp.searchsorted(ends, u, side="right"), len(intervals) - 1)
    offset = u - (ends[index] - jnp.asarray(widths, jnp.float32)[index])
    value = jnp.asarray(lows, jnp.float32)[index] + offset
    value = jnp.clip(value, jnp.asarray(lows, jnp.float32)[index], jnp.asarray(highs)[index])
    return jnp.round(value) if integer else value


class Variant(NamedTuple):
    """A named way to draw every client's value of each tunable parameter.

    `sample(key, tunable, num_clients)` returns the clients' values of one
    parameter (floats; rounded and cast by `client_params`), or None to keep
    the default. `key` is the parameter's own key (see the module doc).
    """

    name: str
    sample: Callable[[jax.Array, Tunable, int], jax.Array | None]
    description: str = ""


VARIANTS: Registry[Variant] = Registry("variant", "env.variant", "jfedrl.variants")
"""Every variant by name. A new one is one `register_variant` call (a plugin
module may make it, or name a `Variant` in the entry-point group `jfedrl.variants`)."""


def register_variant(
    name: str, sample: Callable[[jax.Array, Tunable, int], jax.Array | None], description: str
) -> Variant:
    """Registers variant `name` (see `Variant`); a `ValueError` if it exists."""
    return VARIANTS.register(name, Variant(name, sample, description))


register_variant("default", lambda key, t, num: None, "every client the default params")
register_variant(
    "random",
    lambda key, t, num: sample_intervals(key, [t.random], num, t.integer),
    "each tunable param uniform in a range around its default",
)
register_variant(
    "extreme",
    lambda key, t, num: sample_intervals(key, t.extreme or [t.random], num, t.integer),
    "each tunable param uniform outside the `random` range",
)


#: The clustered variants and their group counts.
CLUSTERED = {"clustered": 2, "clustered3": 3, "clustered4": 4}


def variant_groups(variant: str, num_clients: int) -> np.ndarray | None:
    """Each client's group under a clustered variant (`client % groups`), else None."""
    groups = CLUSTERED.get(variant)
    return None if groups is None else np.arange(num_clients) % groups


def _clustered(groups: int) -> Callable[[jax.Array, Tunable, int], jax.Array]:
    """Groups of clearly different dynamics: client i is in group `i % groups`.

    Within a group every client has the same params (no draw: the key is unused).
    A param with `clusters` takes its group's value from them; any other sits at
    group g's point `lo + (g + 1/2) / groups * (hi - lo)` of the span of its
    `extreme` ranges (its `random` range where it has none), so the groups lie
    far apart (the bench of issue 23 needs tasks where no single policy is best).
    """

    def sample(key: jax.Array, tunable: Tunable, num: int) -> jax.Array:
        del key
        group = np.arange(num) % groups
        if tunable.clusters:
            values = np.asarray(tunable.clusters, np.float64)[group % len(tunable.clusters)]
        else:
            intervals = tunable.extreme or (tunable.random,)
            low = min(lo for lo, _ in intervals)
            high = max(hi for _, hi in intervals)
            values = low + (group + 0.5) / groups * (high - low)
        return jnp.asarray(values, jnp.float32)

    return sample


for _name, _groups in CLUSTERED.items():
    register_variant(
        _name,
        _clustered(_groups),
        f"{_groups} groups (client i in group i % {_groups}) of clearly different dynamics, "
        "equal within a group (mirrored actions where the env declares them)",
    )


def _as_intervals(name: str, raw: Any) -> tuple[Interval, ...]:
    """`[low, high]` or `[[l1, h1], [l2, h2], ...]` -> intervals; ParamError otherwise."""
    if isinstance(raw, (list, tuple)) and len(raw) == 2 and not isinstance(raw[0], (list, tuple)):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ParamError("ranges", f"{name}: expected [low, high] (or a list of them), got {raw!r}")
    out = []
    for item in raw:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ParamError("ranges", f"{name}: expected [low, high], got {item!r}")
        try:
            low, high = float(item[0]), float(item[1])
        except (TypeError, ValueError):
            raise ParamError("ranges", f"{name}: bounds must be numbers, got {item!r}") from None
        if not (math.isfinite(low) and math.isfinite(high)) or low > high:
            raise ParamError("ranges", f"{name}: need finite low <= high, got {item!r}")
        out.append((low, high))
    return tuple(sorted(out))


def _check_bounds(field: str, tunable: Tunable, low: float, high: float) -> None:
    lo, hi = tunable.bounds
    if low < lo or high > hi:
        raise ParamError(
            field, f"{tunable.name}: values must lie in [{lo:g}, {hi:g}], got [{low:g}, {high:g}]"
        )


def check_overrides(
    name: str,
    variant: str = "default",
    ranges: Mapping[str, Any] | None = None,
    values: Mapping[str, Any] | None = None,
    num_clients: int = 1,
) -> None:
    """Validates a variant and user overrides for environment `name`.

    Raises:
        ParamError: naming the field (`variant`, `ranges` or `values`), listing
            the allowed variants / tunable parameters.
    """
    import envs

    entry = envs.spec(name)
    if variant not in entry.variants:
        raise ParamError(
            "variant",
            f"{variant!r} is not allowed for {name}; allowed: {', '.join(entry.variants)}."
            + did_you_mean(variant, entry.variants),
        )
    tunable = entry.tunable_names
    listing = ", ".join(tunable) if tunable else "none"
    for field, given in (("ranges", ranges or {}), ("values", values or {})):
        if not isinstance(given, Mapping):
            raise ParamError(field, f"expected a mapping {{param: ...}}, got {given!r}")
        unknown = [p for p in given if p not in tunable]
        if unknown:
            raise ParamError(
                field,
                f"unknown parameter(s) {', '.join(map(str, unknown))} for {name}; "
                f"tunable: {listing}." + did_you_mean(unknown[0], tunable),
            )
    for param, raw in (ranges or {}).items():
        intervals = _as_intervals(param, raw)
        for (_, h1), (l2, _) in zip(intervals, intervals[1:], strict=False):
            if l2 < h1:
                raise ParamError("ranges", f"{param}: intervals overlap: {raw!r}")
        _check_bounds("ranges", entry.tunable(param), intervals[0][0], intervals[-1][1])
    for param, raw in (values or {}).items():
        if not isinstance(raw, (list, tuple)) or len(raw) != num_clients:
            got = len(raw) if isinstance(raw, (list, tuple)) else repr(raw)
            raise ParamError(
                "values", f"{param}: need one value per client ({num_clients}), got {got}"
            )
        try:
            numbers = [float(v) for v in raw]
        except (TypeError, ValueError):
            raise ParamError("values", f"{param}: values must be numbers, got {raw!r}") from None
        if not all(math.isfinite(v) for v in numbers):
            raise ParamError("values", f"{param}: values must be finite, got {raw!r}")
        t = entry.tunable(param)
        if t.integer and any(not v.is_integer() for v in numbers):
            raise ParamError("values", f"{param}: is an integer parameter, got {raw!r}")
        _check_bounds("values", t, min(numbers), max(numbers))


def _arrays(params: Any) -> Any:
    return jax.tree.map(jnp.asarray, params)


def client_params(
    name: str,
    key: jax.Array,
    num_clients: int,
    variant: str = "default",
    ranges: Mapping[str, Any] | None = None,
    values: Mapping[str, Any] | None = None,
    default_params: Any = None,
) -> Any:
    """Every client's params for `name`, stacked on a leading client axis.

    Args:
        name: registered environment.
        key: the heterogeneity key; the same key gives the same clients.
        num_clients: leading axis size.
        variant: a registered variant (`default`, `random`, `extreme`, ...).
        ranges: `{param: [low, high]}` (or a list of such intervals): overrides
            the variant's ranges for those params (uniform for every variant).
        values: `{param: [v_client0, ...]}`: exact per-client values (win over
            `ranges` and the variant).
        default_params: the base params (e.g. with a shorter episode limit);
            default: the environment's own.

    Returns:
        The batched params, derived fields recomputed per client.
    """
    import envs

    check_overrides(name, variant, ranges, values, num_clients)
    entry = envs.spec(name)
    if default_params is None:
        default_params = envs.make(name)[1]
    batch = envs.batch_params(_arrays(default_params), num_clients)
    ranges, values = ranges or {}, values or {}
    sample = VARIANTS.get(variant).sample
    updates = {}
    for t in entry.tunables:
        dtype = getattr(batch, t.name).dtype
        if t.name in values:
            value = jnp.asarray(np.asarray(values[t.name], np.float64))
        elif t.name in ranges:
            intervals = _as_intervals(t.name, ranges[t.name])
            value = sample_intervals(_param_key(key, t.name), intervals, num_clients, t.integer)
        else:
            value = sample(_param_key(key, t.name), t, num_clients)
            if value is None:
                continue
        updates[t.name] = (jnp.round(value) if t.integer else value).astype(dtype)
    batch = batch.replace(**updates) if updates else batch
    return jax.vmap(entry.derive)(batch)


def param_table(name: str, params: Any) -> dict[str, np.ndarray]:
    """The tunable params of (batched) `params` as host arrays, for logging."""
    import envs

    return {t: np.asarray(getattr(params, t)) for t in envs.spec(name).tunable_names}
