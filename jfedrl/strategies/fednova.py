"""FedNova: normalised averaging for clients that do unequal local work.

Wang, Liu, Liang, Joshi & Poor 2020, "Tackling the Objective Inconsistency
Problem in Heterogeneous Federated Optimization" (NeurIPS), eq. 6 with the
plain local solver (a_i = [1, ..., 1], so ||a_i||_1 = tau_i):

    x+ = x - tau_eff * sum_i p_i (x - x_i) / tau_i,    tau_eff = sum_i p_i tau_i

where tau_i is client i's number of local steps and p_i the weight of its local
objective in the global one. FedAvg's weights n_k / n grow with the work a
client does, so under system heterogeneity (`federation.local_updates_dist`,
stragglers) it optimises an objective tilted towards the fast clients; FedNova
averages the per-step updates instead and rescales them by tau_eff.

Here p_i is uniform over the valid clients: every client's MDP counts equally
(the objective `mean` optimises), whatever its speed. tau_i is
`ClientInfo.local_steps` (local updates; the gradient steps per update are the
same for every client and cancel in tau_eff / tau_i), or `num_steps` where
`local_steps` is not given. With equal tau_i FedNova is FedAvg. The clients'
Adam / RMSProp optimisers are treated as the plain local solver, the paper's
basic form. Not in the seeds: it is the standard remedy for the unequal local
work that MARL's asynchronous A3C workers and real devices produce.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jfedrl.strategies.base import ClientInfo, Strategy, normalized_weights, stateless


def fednova(section=None, num_clients: int | None = None) -> Strategy:
    """FedNova over the valid clients, uniform objective weights p_i."""

    def combine(global_params, client_params, info: ClientInfo, key):
        tau = info.num_steps if info.local_steps is None else info.local_steps
        tau = jnp.where(info.mask, tau.astype(jnp.float32), 0.0)
        p = normalized_weights(jnp.ones_like(tau), info.mask & (tau > 0))
        tau_eff = jnp.sum(p * tau)
        coef = p * tau_eff / jnp.where(tau > 0, tau, 1.0)

        def leaf(g, x):
            c = coef.reshape((-1,) + (1,) * (x.ndim - 1))
            step = jnp.sum(c * (x.astype(jnp.float32) - g.astype(jnp.float32)), axis=0)
            return (g.astype(jnp.float32) + step).astype(g.dtype)

        new_params = jax.tree.map(leaf, global_params, client_params)
        return new_params, {"weights": coef, "tau_eff": tau_eff}

    return stateless(combine)
