"""The `strategy.evolutionary` section and registration (DeRL's Evolutionary rule).

Imports no jax; the maths is `jfedrl.strategies.evolutionary`.
"""

from __future__ import annotations

from dataclasses import dataclass

from jfedrl.schema.fields import param
from jfedrl.strategies.spec import StrategySpec

#: `strategy.evolutionary.algorithm`.
ALGORITHMS = ("differential_evolution", "pso")


@dataclass(frozen=True)
class EvolutionaryConfig:
    """Differential evolution (Storn & Price 1997) or particle swarm (Kennedy & Eberhart
    1995) over the clients' params.
    """

    algorithm: str = param("differential_evolution", renamed_from=("strategy.evo_algorithm",))
    """`differential_evolution` (>= 4 participants) or `pso`."""
    mutation: float = param(0.5, traceable=True, renamed_from=("strategy.evo_mutation",))
    """DE: differential weight F in (0, 2] of the mutation best + F (x_b - x_c)."""
    crossover: float = param(0.9, traceable=True, renamed_from=("strategy.evo_crossover",))
    """DE: binomial crossover rate CR in [0, 1]."""
    pso_inertia: float = param(0.7298, traceable=True, renamed_from=("strategy.pso_inertia",))
    """PSO: inertia w (>= 0); default: Clerc & Kennedy 2002 constriction."""
    pso_cognitive: float = param(1.49618, traceable=True, renamed_from=("strategy.pso_cognitive",))
    """PSO: pull c1 (>= 0) towards each particle's own best."""
    pso_social: float = param(1.49618, traceable=True, renamed_from=("strategy.pso_social",))
    """PSO: pull c2 (>= 0) towards the swarm's best."""


#: Names users type that are not strategies of their own -> where they live.
HINTS = {
    "pso": "--strategy evolutionary --evolutionary.algorithm pso",
    "de": "--strategy evolutionary --evolutionary.algorithm differential_evolution",
    "differential_evolution": "--strategy evolutionary "
    "--evolutionary.algorithm differential_evolution",
}


SPECS = (
    StrategySpec(
        "evolutionary",
        "jfedrl.strategies.evolutionary:evolutionary",
        "jfedrl.strategies.evolutionary:validate",
        EvolutionaryConfig,
        "differential evolution / particle swarm over clients (DeRL's Evolutionary)",
    ),
)
