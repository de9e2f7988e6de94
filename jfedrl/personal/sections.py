"""The `personal.<method>` sections and the built-in methods' registrations.

Imports no jax; the maths is in `fedper`, `ditto`, `finetune` and `ifca` beside
this module. Papers: FedPer, Arivazhagan et al. 2019 ("Federated Learning with
Personalization Layers"); Ditto, Li et al. ICML 2021 ("Ditto: Fair and Robust
Federated Learning Through Personalization"); fine-tuning ("FedAvg + FT", e.g.
Wang et al. 2019, "Federated Evaluation of On-device Personalization"); IFCA,
Ghosh et al. NeurIPS 2020 ("An Efficient Framework for Clustered Federated Learning").
"""

from __future__ import annotations

from dataclasses import dataclass

from jfedrl.algorithms.spec import PROX_REASON
from jfedrl.personal.spec import PersonalSpec
from jfedrl.schema.fields import param


@dataclass(frozen=True)
class FedPerConfig:
    """Shared body, local head (FedPer, Arivazhagan et al. 2019)."""

    local: str = "Dense_2"
    """Regular expression over the params' leaf paths (`params/actor/Dense_2/kernel`,
    TD3: `actor/params/MLP_0/Dense_2/kernel`) of the layers each client keeps: never
    broadcast, never aggregated. Default: the output layers of the default two-hidden-layer
    networks (actor and critic heads)."""


@dataclass(frozen=True)
class DittoConfig:
    """A personal model per client, proximal to the global one (Ditto, Li et al. 2021)."""

    lam: float = param(0.1, switch=True, static_reason=PROX_REASON)
    """lambda of the personal objective's proximal term lambda/2 ||v - w_global||^2
    (>= 0; 0: the personal model is pure local training)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """The global policy fine-tuned on each client's env at evaluation (FedAvg + FT)."""

    updates: int = param(1, resumable=True)
    """Local updates of the global policy on each client's own env before its personalized
    evaluation (>= 0; 0: the global policy itself). Training is untouched."""
    fresh_state: bool = param(False, resumable=True)
    """Fine-tune from a freshly initialised client state (optimiser, learning-rate schedule,
    replay buffer) instead of the client's own: PPO's and A2C's annealed learning rate is
    near 0 late in a run, so fine-tuning from the client's own state then barely moves."""


@dataclass(frozen=True)
class IFCAConfig:
    """K global models, each client trains the best on its env (Ghosh et al. 2020)."""

    k: int = 2
    """Number of cluster models (static; 1 <= k <= federation.num_clients)."""
    eval_episodes: int = 1
    """Deterministic episodes each participant runs with each of the k models, at the start
    of its round, to choose the one it trains (the highest mean return)."""


NONE = PersonalSpec(
    "none",
    personal_params="jfedrl.personal.methods:own_params",
    description="no personalization: one global policy (personal = each client's last local)",
)
FEDPER = PersonalSpec(
    "fedper",
    personal_params="jfedrl.personal.methods:fedper_params",
    wrap_algorithm="jfedrl.personal.methods:fedper_algorithm",
    validate="jfedrl.personal.methods:validate_fedper",
    section=FedPerConfig,
    description="FedPer: layers matching personal.fedper.local stay on each client",
)
DITTO = PersonalSpec(
    "ditto",
    personal_params="jfedrl.personal.ditto:personal_params",
    wrap_algorithm="jfedrl.personal.ditto:wrap",
    validate="jfedrl.personal.ditto:validate",
    section=DittoConfig,
    description="Ditto: a personal model per client with a proximal term to the global",
)
FINETUNE = PersonalSpec(
    "finetune",
    personal_params="jfedrl.personal.methods:finetune_params",
    validate="jfedrl.personal.methods:validate_finetune",
    section=FinetuneConfig,
    description="FedAvg + FT: the global fine-tuned for K local updates at evaluation",
)
IFCA = PersonalSpec(
    "ifca",
    personal_params="jfedrl.personal.ifca:personal_params",
    wrap_algorithm="jfedrl.personal.ifca:wrap_algorithm",
    wrap_strategy="jfedrl.personal.ifca:wrap_strategy",
    validate="jfedrl.personal.ifca:validate",
    section=IFCAConfig,
    description="IFCA: K cluster models; each client trains the best one on its env",
)

BUILT_IN = (NONE, FEDPER, DITTO, FINETUNE, IFCA)
