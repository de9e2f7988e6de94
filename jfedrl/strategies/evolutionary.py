"""Evolutionary aggregation: the clients are a population, their returns its fitness.

Covers DeRL "Evolutionary" (DeRL on Golem): the federated agent's "DNA" is
obtained by combining the trained agents' DNA with a swarm / evolutionary
optimiser (e.g. differential evolution), so that mutations keep the federation
from converging to a sub-optimal policy. The seed's implementation returned
nothing; here it is a pure `init` / `aggregate` pair around evosax's ask/tell
(Lange 2023, "evosax: JAX-based Evolution Strategies"), which minimises, so the
fitness is the negated return.

Each round, with the K client slots as the population:

1. `tell`: the clients' trained params (flattened) and fitness -return are
   told to the optimiser (masked clients and non-finite returns: fitness +inf).
2. `ask`: the optimiser proposes the next generation.
3. The next global params are the proposal for the best member.

- `differential_evolution` (Storn & Price 1997, "Differential Evolution - A
  Simple and Efficient Heuristic for Global Optimization over Continuous
  Spaces"), DE/best/1/bin: `tell` keeps, slot by slot, the better of the stored
  member and the new client (greedy selection, an elitist archive), and the
  global becomes the best member's trial vector
  best + F (x_b - x_c) on a binomial crossover mask with rate CR, where x_b,
  x_c are two other random members (F = `evo_mutation`, CR = `evo_crossover`).
  The mutation scales itself to the spread of the population.
- `pso` (Kennedy & Eberhart 1995, "Particle Swarm Optimization"): the particles'
  positions are the clients' params. Every client restarts from the broadcast
  global, so a particle's velocity is set to the move it actually made since
  the last round (not the move last proposed, which nobody took: with it the
  swarm diverges); `ask` then adds the pulls towards the particle's own best and
  the swarm's best (inertia / cognitive / social coefficients `pso_inertia`,
  `pso_cognitive`, `pso_social`; defaults are Clerc & Kennedy 2002's
  constriction values), and the global is the next position of the round's
  best particle.

The server state is the evosax state (a flax struct of arrays, `[K, D]`
population plus fitness and bests), so it lives in the `lax.scan` carry and in
checkpoints; everything is a function of the aggregate key, so a run is
reproducible. The population needs the length of the client axis, which is why
this rule needs `num_clients` when built.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jfedrl.config import participants_per_round
from jfedrl.schema.checks import ConfigError, require_choice, require_positive, require_range
from jfedrl.strategies.base import (
    ClientInfo,
    Strategy,
    flatten_clients,
    unflatten,
)
from jfedrl.strategies.evolutionary_config import ALGORITHMS
from jfedrl.tree import tree_where

MIN_POPULATION = {"differential_evolution": 4, "pso": 1}
"""DE draws a best member and two further distinct members, plus the target."""


@functools.lru_cache(maxsize=32)
def _optimizer(algorithm: str, population: int, dims: int):
    """The evosax optimiser over flat `[dims]` vectors (cached: its jitted methods key on it)."""
    # evosax (~0.7 s to import) loads only when this strategy is used.
    from evosax.algorithms import PSO, DifferentialEvolution

    # Built outside any trace, so the object holds no tracers.
    with jax.ensure_compile_time_eval():
        template = np.zeros((dims,), np.float32)
        if algorithm == "differential_evolution":
            return DifferentialEvolution(population_size=population, solution=template)
        if algorithm == "pso":
            return PSO(population_size=population, solution=template)
    raise ValueError(
        f"strategy.evolutionary.algorithm: {algorithm!r}; allowed: {', '.join(ALGORITHMS)}"
    )


def _params(section):
    """The evosax hyper-parameters from `strategy.evolutionary`."""
    if section.algorithm == "differential_evolution":
        from evosax.algorithms.population_based.differential_evolution import Params

        return Params(
            elitism=True,
            crossover_rate=section.crossover,
            differential_weight=section.mutation,
            differential_weight_min=section.mutation,
            differential_weight_max=section.mutation,
        )
    from evosax.algorithms.population_based.pso import Params

    return Params(
        inertia_coeff=section.pso_inertia,
        cognitive_coeff=section.pso_cognitive,
        social_coeff=section.pso_social,
    )


def _strong(tree):
    """Fixes every leaf's dtype (no weak types), so the scan carry type never changes."""
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.asarray(x).dtype), tree)


def _num_dims(params) -> int:
    return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(params)))


def evolutionary(section, num_clients: int | None = None) -> Strategy:
    """Differential evolution or particle swarm over the clients' params.

    Args:
        section: `strategy.evolutionary` (`algorithm`, `mutation`, `crossover`, `pso_*`).
        num_clients: length of the client axis `aggregate` receives.

    Returns:
        The strategy; its server state is the evosax state.
    """
    if num_clients is None:
        raise ValueError(
            "strategy 'evolutionary' keeps a population with one member per client slot: "
            "build it with strategies.make(strategy_config, num_clients=...)"
        )
    algorithm = section.algorithm
    require_choice("strategy.evolutionary.algorithm", algorithm, ALGORITHMS)
    if num_clients < MIN_POPULATION[algorithm]:
        raise ValueError(
            f"strategy.evolutionary.algorithm={algorithm} needs >= "
            f"{MIN_POPULATION[algorithm]} clients, got {num_clients}"
        )
    hyper = _params(section)

    def init(global_params):
        optimizer = _optimizer(algorithm, num_clients, _num_dims(global_params))
        flat = flatten_clients(jax.tree.map(lambda x: x[None], global_params))
        population = jnp.broadcast_to(flat, (num_clients, flat.shape[1]))
        # An unevaluated population (fitness +inf): the first round's clients replace it.
        fitness = jnp.full((num_clients,), jnp.inf, jnp.float32)
        return _strong(optimizer.init(jax.random.PRNGKey(0), population, fitness, hyper))

    def aggregate(state, global_params, client_params, info: ClientInfo, key):
        population = flatten_clients(client_params)
        if population.shape[0] != num_clients:
            raise ValueError(
                f"evolutionary was built for {num_clients} clients but aggregates "
                f"{population.shape[0]}: pass the client-axis length as num_clients"
            )
        optimizer = _optimizer(algorithm, num_clients, population.shape[1])
        returns = info.returns.astype(jnp.float32)
        valid = info.mask & jnp.isfinite(returns)
        fitness = jnp.where(valid, -returns, jnp.inf)
        key_tell, key_ask = jax.random.split(key)
        told, _ = optimizer.tell(key_tell, population, fitness, state, hyper)
        if algorithm == "pso":
            # The clients restart from the broadcast global, so a particle moves by
            # what actually happened to it, not by the velocity last proposed.
            told = told.replace(velocity=population - state.population)
        proposals, asked = optimizer.ask(key_ask, told, hyper)
        best = jnp.argmin(asked.fitness)
        new_flat = proposals[best]
        new_params = unflatten(new_flat, global_params)
        new_state = _strong(asked)
        any_valid = jnp.any(valid)
        metrics = {
            "best_return": -new_state.best_fitness,
            "generation_best_return": jnp.max(jnp.where(valid, returns, -jnp.inf)),
            "member": best.astype(jnp.int32),
            "mutation_norm": jnp.linalg.norm(new_flat - asked.population[best]),
        }
        return (
            tree_where(any_valid, new_params, global_params),
            tree_where(any_valid, new_state, state),
            metrics,
        )

    return Strategy(init=init, aggregate=aggregate)


def validate(config) -> None:
    """Checks `strategy.evolutionary` against the participants per round."""
    section, path = config.strategy.evolutionary, "strategy.evolutionary"
    require_choice(f"{path}.algorithm", section.algorithm, ALGORITHMS)
    n = participants_per_round(config.federation)
    need = MIN_POPULATION[section.algorithm]
    if n < need:
        raise ConfigError(
            f"{path}.algorithm: {section.algorithm} needs >= {need} participants "
            f"per round (federation.num_clients x federation.participation), got {n}"
        )
    if section.algorithm == "differential_evolution":
        # DE's differential weight F and crossover rate CR.
        require_range(f"{path}.mutation", section.mutation, 0, 2, low_open=True)
        require_range(f"{path}.crossover", section.crossover, 0, 1)
    else:
        for name in ("pso_inertia", "pso_cognitive", "pso_social"):
            require_positive(f"{path}.{name}", getattr(section, name), strict=False)
