"""Update attacks: what a Byzantine participant sends in place of its honest update.

Each attack is a pure function of `AttackInputs` (the round's participants'
params stacked on a leading axis K) returning the params every participant
would send under attack, and its diagnostics; `apply_update_attack` keeps them
only for the Byzantine participants from `attack.start_round` on (a `jnp.where`
on the round: no recompilation). It runs in `Simulator.aggregate`, after local
training and before screening, so every executor (in-process, `local`, `ray`,
`golem`) sees the same attack.

Threat model: the Byzantine participants know the global params and, for the
colluding attacks (ALIE, IPM), every benign participant's update of the round
(the omniscient attacker of Baruch et al. 2019 and Xie et al. 2020). They do not
see the server's rule or its randomness. Δ is a participant's update, its params
minus the params it started from (the stale start under `federation.staleness`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

from jfedrl.round.state import tree_all_finite, where_clients

Metrics = dict[str, jax.Array]


class AttackInputs(NamedTuple):
    """What an update attack sees of one round (leading axis K: the participants)."""

    key: jax.Array
    """The round's attack key."""
    global_params: Any
    """The global params the round broadcast (unstacked)."""
    reference: Any
    """`[K, ...]` the params each participant started from (its Δ's origin)."""
    params: Any
    """`[K, ...]` each participant's honest params after local training."""
    deltas: Any
    """`[K, ...]` `params - reference`."""
    byzantine: jax.Array
    """`[K]` bool: the participants that attack this round."""
    benign: jax.Array
    """`[K]` bool: the honest participants with a real, finite update."""
    num_participants: jax.Array
    """n, the participants with a real, finite honest update (Byzantine included)."""


UpdateAttack = Callable[[AttackInputs], tuple[Any, Metrics]]


def _rows(weights: jax.Array, x: jax.Array) -> jax.Array:
    return weights.reshape((-1,) + (1,) * (x.ndim - 1))


def _from_deltas(inputs: AttackInputs, deltas: Any) -> Any:
    """`reference + deltas`, in each leaf's dtype."""
    return jax.tree.map(lambda r, d: (r + d).astype(r.dtype), inputs.reference, deltas)


def benign_moments(inputs: AttackInputs) -> tuple[Any, Any]:
    """Per-coordinate mean and (population) std of the benign updates (0 if none)."""
    w = inputs.benign.astype(jnp.float32)
    w = w / jnp.maximum(w.sum(), 1.0)

    def mean(d):
        d = jnp.where(_rows(inputs.benign, d), d, 0.0).astype(jnp.float32)
        return jnp.sum(_rows(w, d) * d, axis=0)

    means = jax.tree.map(mean, inputs.deltas)

    def std(d, m):
        d = jnp.where(_rows(inputs.benign, d), d, 0.0).astype(jnp.float32)
        return jnp.sqrt(jnp.sum(_rows(w, d) * jnp.square(d - m), axis=0))

    return means, jax.tree.map(std, inputs.deltas, means)


def sign_flip(section: Any) -> UpdateAttack:
    """-s·Δ (FedPG-BR's sign flipping, Fan et al. 2021, with s = `scale`)."""

    def attack(inputs: AttackInputs):
        return _from_deltas(inputs, jax.tree.map(lambda d: -section.scale * d, inputs.deltas)), {}

    return attack


def scale(section: Any) -> UpdateAttack:
    """λ·Δ: model replacement (Bagdasaryan et al. 2020, "How To Backdoor Federated
    Learning"); λ = `factor`, or n (the participants) for 0: under FedAvg with equal
    weights the global model then becomes the attacker's local model.
    """

    def attack(inputs: AttackInputs):
        n = inputs.num_participants.astype(jnp.float32)
        factor = jnp.where(section.factor > 0, section.factor, n)
        return _from_deltas(inputs, jax.tree.map(lambda d: factor * d, inputs.deltas)), {
            "scale_factor": factor
        }

    return attack


def gaussian(section: Any) -> UpdateAttack:
    """Δ' ~ N(0, σ² I), σ = `std` (the Gaussian attack of Xie et al. 2018,
    "Generalized Byzantine-tolerant SGD").
    """

    def attack(inputs: AttackInputs):
        leaves, treedef = jax.tree.flatten(inputs.deltas)
        keys = jax.random.split(inputs.key, len(leaves))
        noise = [
            section.std * jax.random.normal(k, d.shape, jnp.float32)
            for k, d in zip(keys, leaves, strict=True)
        ]
        return _from_deltas(inputs, jax.tree.unflatten(treedef, noise)), {}

    return attack


def zero(section: Any = None) -> UpdateAttack:
    """Δ' = 0: the participant sends back the params it started from (FedPG-BR)."""

    def attack(inputs: AttackInputs):
        return inputs.reference, {}

    return attack


def free_rider(section: Any = None) -> UpdateAttack:
    """The global params, sent back as if trained (Lin et al. 2019, "Free-riders in
    Federated Learning"). In param space this is `zero` (they differ only under
    staleness, where `zero` returns the stale start); both report their environment
    steps as usual, so a step-weighted rule weights them like honest clients.
    """

    def attack(inputs: AttackInputs):
        k = jax.tree.leaves(inputs.params)[0].shape[0]
        return jax.tree.map(lambda g: jnp.broadcast_to(g, (k, *g.shape)), inputs.global_params), {}

    return attack


def random_noise(section: Any) -> UpdateAttack:
    """Δ + u·c·(max Δ - min Δ), u ~ U(-1, 1) per coordinate: FedPG-BR's random noise
    (Fan et al. 2021, its code's 3 x the range of the update), c = `scale`; the range
    is over every coordinate of the participant's own update.
    """

    def attack(inputs: AttackInputs):
        leaves, treedef = jax.tree.flatten(inputs.deltas)
        top = jnp.max(jnp.stack([jnp.max(d.reshape(d.shape[0], -1), 1) for d in leaves]), 0)
        low = jnp.min(jnp.stack([jnp.min(d.reshape(d.shape[0], -1), 1) for d in leaves]), 0)
        spread = (top - low).astype(jnp.float32)
        keys = jax.random.split(inputs.key, len(leaves))
        noisy = [
            d
            + _rows(section.scale * spread, d) * jax.random.uniform(k, d.shape, jnp.float32, -1, 1)
            for k, d in zip(keys, leaves, strict=True)
        ]
        return _from_deltas(inputs, jax.tree.unflatten(treedef, noisy)), {}

    return attack


def alie_z(n: jax.Array, f: jax.Array) -> jax.Array:
    """Baruch et al. 2019's z_max = Φ⁻¹((n - s)/n), s = ⌊n/2 + 1⌋ - f.

    s is how many benign clients the colluders need "on their side" for a majority;
    z_max is the largest shift (in benign stds) that still keeps that many benign
    clients farther from the mean than the attackers, in the normal approximation.
    """
    n = jnp.maximum(n.astype(jnp.float32), 1.0)
    s = jnp.floor(n / 2.0 + 1.0) - f.astype(jnp.float32)
    return ndtri(jnp.clip((n - s) / n, 1e-6, 1.0 - 1e-6))


def alie(section: Any) -> UpdateAttack:
    """A Little Is Enough (Baruch et al. 2019): every colluder sends μ + z·σ, the
    per-coordinate mean and std of the benign updates of the round, z = `z` or, for
    0, `alie_z` of the round's participants (diagnostic `attack/alie_z`).
    """

    def attack(inputs: AttackInputs):
        f = inputs.byzantine.sum()
        z = jnp.where(section.z > 0, section.z, alie_z(inputs.num_participants, f))
        mean, std = benign_moments(inputs)
        shifted = jax.tree.map(lambda m, s: m + z * s, mean, std)
        k = inputs.byzantine.shape[0]
        deltas = jax.tree.map(lambda x: jnp.broadcast_to(x, (k, *x.shape)), shifted)
        return _from_deltas(inputs, deltas), {"alie_z": z}

    return attack


def ipm(section: Any) -> UpdateAttack:
    """Inner-product manipulation (Xie et al. 2020, "Fall of Empires"): every colluder
    sends -ε times the mean of the benign updates, ε = `eps`, so the aggregate's inner
    product with the true descent direction turns negative for a large enough ε.
    """

    def attack(inputs: AttackInputs):
        mean, _ = benign_moments(inputs)
        k = inputs.byzantine.shape[0]
        deltas = jax.tree.map(lambda m: jnp.broadcast_to(-section.eps * m, (k, *m.shape)), mean)
        return _from_deltas(inputs, deltas), {}

    return attack


def nan(section: Any = None) -> UpdateAttack:
    """Non-finite params. The server's screening masks any non-finite update before a
    rule sees it (the client is counted in `clients_excluded`), exactly as for a crashed
    client (`JFEDRL_FAULT=nan`): this attack tests that path, not a robust rule.
    """

    def attack(inputs: AttackInputs):
        return jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), inputs.params), {}

    return attack


def apply_update_attack(
    attack: UpdateAttack,
    key: jax.Array,
    global_params: Any,
    reference: Any,
    params: Any,
    byzantine: jax.Array,
    honest: jax.Array,
) -> tuple[Any, Metrics]:
    """The params the participants send: `attack`'s for the Byzantine ones, else their own.

    Args:
        attack: the update attack.
        key: the round's attack key.
        global_params: the broadcast global params (unstacked).
        reference: the params each participant started from: unstacked (the global
            params) or stacked `[K, ...]` (staleness).
        params: `[K, ...]` the participants' honest params after training.
        byzantine: `[K]` bool, the participants that attack this round (already
            `valid` and past `start_round`).
        honest: `[K]` bool, the real participants that returned an update.
    """
    k = byzantine.shape[0]
    leaves = jax.tree.leaves(reference)
    if leaves and leaves[0].ndim == jax.tree.leaves(global_params)[0].ndim:
        reference = jax.tree.map(lambda g: jnp.broadcast_to(g, (k, *g.shape)), reference)
    finite = jnp.logical_and(jax.vmap(tree_all_finite)(params), honest)
    inputs = AttackInputs(
        key=key,
        global_params=global_params,
        reference=reference,
        params=params,
        deltas=jax.tree.map(lambda p, r: p - r, params, reference),
        byzantine=byzantine,
        benign=finite & ~byzantine,
        num_participants=finite.sum(),
    )
    attacked, metrics = attack(inputs)
    attacked = jax.tree.map(lambda a, p: a.astype(p.dtype), attacked, params)
    return where_clients(byzantine, attacked, params), metrics
