"""Byzantine-robust aggregation: coordinate-wise statistics and Krum.

- `median`, `trimmed_mean`: Yin et al. 2018, "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates" (ICML). Per coordinate, the
  median, or the mean after dropping the floor(beta * n) largest and smallest
  values (beta = `strategy.trimmed_mean.beta`).
- `krum`, `multi_krum`: Blanchard et al. 2017, "Machine Learning with
  Adversaries: Byzantine Tolerant Gradient Descent" (NeurIPS). Each client's
  score is the sum of squared distances to its n - f - 2 nearest neighbours;
  Krum takes the client with the lowest score, Multi-Krum averages the m
  lowest: with equal weights (the paper) or, with `krum_weighting:
  num_steps`, weighted by the clients' n_k as Flower's Multi-Krum does
  (`flwr/server/strategy/aggregate.py`, `aggregate_krum`).

Not in the seeds: these are the robust rules users of federated learning
expect (the catalogue in Flower's `server/strategy/aggregate.py`). Shapes are
static: n is the number of *valid* clients, counted from the mask; masked
clients are sorted to the end (coordinate rules) or given infinite distance
(Krum), never removed.

Every rule is overflow-safe in float32: where the exact result is finite, so is
the computed one. The trimmed mean divides before it sums, the median adds
half the gap between its middle values (`midpoint`), and Krum measures
distances between updates scaled by a power of two (exact) so that no square
overflows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jfedrl.config import participants_per_round
from jfedrl.schema.checks import (
    ConfigError,
    require,
    require_choice,
    require_positive,
    require_range,
)
from jfedrl.strategies.base import (
    ClientInfo,
    Strategy,
    flatten_clients,
    normalized_weights,
    stateless,
    unflatten,
    weighted_mean,
)
from jfedrl.strategies.robust_config import KRUM_WEIGHTINGS

SORT_BLOCK = 256
"""Columns sorted together: keeps each block's working set in cache."""


def bitonic_sort(x: jax.Array) -> jax.Array:
    """Sorts `[K, ...]` along axis 0 with Batcher's bitonic network (K padded to 2^m).

    The network is static: log2(K) (log2(K) + 1) / 2 elementwise min/max stages,
    each vectorised over all other axes. XLA's CPU sort compares element by
    element and is much slower on `[K, D]` parameter matrices (bench/aggregation.md,
    from `scripts/bench_aggregation.py`).
    """
    n0 = x.shape[0]
    n = 1 << max(0, (n0 - 1).bit_length())
    if n != n0:
        x = jnp.concatenate([x, jnp.full((n - n0,) + x.shape[1:], jnp.inf, x.dtype)])
    rest = x.shape[1:]
    index = np.arange(n)
    size = 2
    while size <= n:
        stride = size // 2
        while stride >= 1:
            partner = x.reshape((n // (2 * stride), 2, stride) + rest)[:, ::-1].reshape(x.shape)
            take_min = (index < (index ^ stride)) == ((index & size) == 0)
            take_min = jnp.asarray(take_min).reshape((n,) + (1,) * len(rest))
            x = jnp.where(take_min, jnp.minimum(x, partner), jnp.maximum(x, partner))
            stride //= 2
        size *= 2
    return x[:n0]


def sort_clients(flat: jax.Array, mask: jax.Array) -> jax.Array:
    """`[K, D]` sorted along the client axis, masked clients (and NaN) moved to the end."""
    flat = jnp.where(mask[:, None] & ~jnp.isnan(flat), flat, jnp.inf)
    k, d = flat.shape
    if d <= SORT_BLOCK:
        return bitonic_sort(flat)
    pad = (-d) % SORT_BLOCK
    blocks = jnp.pad(flat, ((0, 0), (0, pad))).reshape(k, -1, SORT_BLOCK).transpose(1, 0, 2)
    return jax.lax.map(bitonic_sort, blocks).transpose(1, 0, 2).reshape(k, -1)[:, :d]


def midpoint(low: jax.Array, high: jax.Array) -> jax.Array:
    """(low + high) / 2 for low <= high without overflow: the sum where the signs differ
    (it cannot overflow then), else low plus half the gap (which cannot either).

    `0.5 * low + 0.5 * high` would not do: XLA factors it back into `0.5 * (low + high)`.
    """
    same_sign = (low >= 0) == (high >= 0)
    return jnp.where(same_sign, low + 0.5 * (high - low), 0.5 * (low + high))


def coordinate_median(client_params, mask: jax.Array):
    """Per-coordinate median of the valid clients (mean of the two middle values if n is even)."""
    n = mask.sum()
    low, high = jnp.maximum((n - 1) // 2, 0), jnp.maximum(n // 2, 0)
    s = sort_clients(flatten_clients(client_params), mask)
    first = jax.tree.map(lambda x: x[0], client_params)
    return unflatten(midpoint(s[low], s[high]), first)


def trim_count(n: jax.Array, beta: float) -> jax.Array:
    """floor(beta * n): values dropped from each end (the epsilon absorbs float rounding)."""
    return jnp.floor(beta * n.astype(jnp.float32) + 1e-6).astype(jnp.int32)


def coordinate_trimmed_mean(client_params, mask: jax.Array, beta: float):
    """Per-coordinate mean of the valid clients after trimming floor(beta n) from each end."""
    n = mask.sum()
    k = trim_count(n, beta)
    kept = jnp.maximum(n - 2 * k, 1)
    s = sort_clients(flatten_clients(client_params), mask)
    index = jnp.arange(s.shape[0])[:, None]
    keep = (index >= k) & (index < n - k)
    first = jax.tree.map(lambda x: x[0], client_params)
    # Divided before summing: the sum of the kept values could overflow, their mean cannot.
    return unflatten(jnp.sum(jnp.where(keep, s / kept, 0.0), axis=0), first)


def median(section=None, num_clients: int | None = None) -> Strategy:
    """Coordinate-wise median of the valid clients."""

    def combine(global_params, client_params, info: ClientInfo, key):
        return coordinate_median(client_params, info.mask), {
            "clients_used": info.mask.sum().astype(jnp.int32)
        }

    return stateless(combine)


def trimmed_mean(section, num_clients: int | None = None) -> Strategy:
    """Coordinate-wise trimmed mean with trim fraction `beta`."""
    beta = section.beta

    def combine(global_params, client_params, info: ClientInfo, key):
        n = info.mask.sum()
        metrics = {
            "clients_used": info.mask.sum().astype(jnp.int32),
            "trimmed_per_side": trim_count(n, beta),
        }
        return coordinate_trimmed_mean(client_params, info.mask, beta), metrics

    return stateless(combine)


def pairwise_sq_distances(flat: jax.Array) -> jax.Array:
    """Squared Euclidean distances between rows of `[K, D]`, via the Gram matrix.

    O(K^2 D) work in one matrix product. Rows should be centred (e.g. updates
    relative to the global params) so the subtraction loses little precision;
    overflow gives inf, never NaN, and no negative rounding residue.
    """
    sq = jnp.sum(jnp.square(flat), axis=1)
    gram = jnp.matmul(flat, flat.T, precision=jax.lax.Precision.HIGHEST)
    dist = sq[:, None] + sq[None, :] - 2.0 * gram
    dist = jnp.where(jnp.isnan(dist), jnp.inf, dist)
    return jnp.maximum(dist, 0.0)


def krum_scores(flat: jax.Array, mask: jax.Array, f: int) -> jax.Array:
    """Each valid client's Krum score; +inf for masked clients.

    The score sums the squared distances to the client's n - f - 2 nearest
    other valid clients (n = number of valid clients; at least 0, at most
    n - 1 neighbours when too few clients are valid this round).
    """
    k = flat.shape[0]
    n = mask.sum()
    pair = mask[:, None] & mask[None, :] & ~jnp.eye(k, dtype=bool)
    dist = jnp.where(pair, pairwise_sq_distances(flat), jnp.inf)
    nearest = jnp.sort(dist, axis=1)
    count = jnp.clip(n - f - 2, 0, jnp.maximum(n - 1, 0))
    take = jnp.arange(k)[None, :] < count
    scores = jnp.sum(jnp.where(take, nearest, 0.0), axis=1)
    return jnp.where(mask, scores, jnp.inf)


def krum_selection(flat: jax.Array, mask: jax.Array, f: int, m: int) -> tuple[jax.Array, jax.Array]:
    """The m (0: n - f) valid clients with the lowest Krum scores.

    Returns:
        A boolean `[K]` selection and the scores. Ties go to the lower index;
        an overflowing (inf) score still ranks before any masked client.
    """
    k = flat.shape[0]
    n = mask.sum()
    scores = krum_scores(flat, mask, f)
    big = jnp.finfo(jnp.float32).max
    key = jnp.where(mask, jnp.minimum(scores, big), jnp.inf)
    rank = jnp.zeros((k,), jnp.int32).at[jnp.argsort(key)].set(jnp.arange(k, dtype=jnp.int32))
    count = jnp.maximum(n - f, 1) if m == 0 else jnp.minimum(m, n)
    return (rank < count) & mask, scores


"""How Multi-Krum averages its selection: equal weights, or by n_k (Flower)."""


def multi_krum(section, num_clients: int | None = None) -> Strategy:
    """Multi-Krum: the mean of the `krum_m` best-scored clients (0: n - f).

    `krum_weighting: mean` weights the selected clients equally (Blanchard et
    al. 2017); `num_steps` weights them by their environment steps n_k, as
    Flower's `aggregate_krum` does (it averages the selection with FedAvg).
    """
    return _krum(section.f, section.m, section.weighting == "num_steps")


def krum(section, num_clients: int | None = None) -> Strategy:
    """Krum: the single best-scored client's params."""
    return _krum(section.f, 1)


def scaled_updates(client_params, global_params, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The valid clients' updates as `[K, D]`, scaled by 2^-e so every entry is below 2.

    e is the exponent of the largest magnitude among the valid clients' params and
    the global params. Scaling by a power of two is exact, so distances keep their
    order (and scale back exactly), but neither the subtraction nor a square of
    the Gram matrix can overflow where the params themselves are finite.

    Returns:
        The scaled updates and e (int32).
    """

    def largest(x, valid):
        x = jnp.abs(x.astype(jnp.float32))
        if valid is not None:
            x = jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0)
        return jnp.max(jnp.where(jnp.isfinite(x), x, 0.0), initial=0.0)

    peak = jnp.max(
        jnp.stack(
            [largest(x, mask) for x in jax.tree.leaves(client_params)]
            + [largest(x, None) for x in jax.tree.leaves(global_params)]
        )
    )
    _, exponent = jnp.frexp(jnp.where(peak > 0, peak, 1.0))
    updates = jax.tree.map(
        lambda c, g: (
            jnp.ldexp(c.astype(jnp.float32), -exponent)
            - jnp.ldexp(g.astype(jnp.float32), -exponent)
        ),
        client_params,
        global_params,
    )
    return flatten_clients(updates), exponent


def _krum(f: int, m: int, by_num_steps: bool = False) -> Strategy:
    def combine(global_params, client_params, info: ClientInfo, key):
        flat, exponent = scaled_updates(client_params, global_params, info.mask)
        selected, scores = krum_selection(flat, info.mask, f, m)
        raw = info.num_steps if by_num_steps else jnp.ones_like(info.num_steps)
        weights = normalized_weights(raw, selected)
        metrics = {
            "weights": weights,
            "selected": selected,
            # In the params' units (inf where the true score exceeds float32's range).
            "scores": jnp.where(info.mask, jnp.ldexp(scores, 2 * exponent), 0.0),
        }
        return weighted_mean(client_params, weights), metrics

    return stateless(combine)


def validate_trimmed_mean(config) -> None:
    beta = config.strategy.trimmed_mean.beta
    require_range("strategy.trimmed_mean.beta", beta, 0, 0.5, high_open=True)


def validate_krum(config) -> None:
    """Krum's f against the participants per round (`strategy.<krum|multi_krum>.f`)."""
    name = config.strategy.name
    f, path = getattr(config.strategy, name).f, f"strategy.{name}.f"
    n = participants_per_round(config.federation)
    require_positive(path, f, strict=False)
    if n <= 2 * f + 2:
        raise ConfigError(
            f"{path}: Krum needs n > 2f + 2 participants per round; got n={n} "
            f"(federation.num_clients x federation.participation) and f={f}, "
            f"so f must be <= {max((n - 3) // 2, -1)}"
            + (" (no f works: raise the participants to >= 3)" if n < 3 else "")
        )


def validate_multi_krum(config) -> None:
    validate_krum(config)
    section = config.strategy.multi_krum
    require_choice("strategy.multi_krum.weighting", section.weighting, KRUM_WEIGHTINGS)
    f, m = section.f, section.m
    n = participants_per_round(config.federation)
    require(0 <= m <= n - f, "strategy.multi_krum.m", f"in [0, n - f] = [0, {n - f}] (0: n - f)", m)
