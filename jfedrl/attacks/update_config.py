"""The update attacks' sections and registrations (no JAX here; the maths is
`jfedrl.attacks.update`).

An update attack rewrites what a Byzantine participant sends after its local
training, before the server screens and aggregates the updates. Δ below is the
participant's honest update (its params minus the params it started from).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jfedrl.attacks.spec import AttackSpec
from jfedrl.schema.checks import require
from jfedrl.schema.fields import param

MODULE = "jfedrl.attacks.update"


@dataclass(frozen=True)
class SignFlipConfig:
    """Sign flipping: send -s·Δ (FedPG-BR, Fan et al. 2021)."""

    scale: float = param(4.0, traceable=True)
    """s > 0. With a fraction f of attackers sending -s·Δ against honest Δ, FedAvg's
    step is (1 - f - f·s)·Δ: it reverses only when s > (1 - f)/f, i.e. s > 2.33 at
    f = 0.3 (FedPG-BR's 3 of 10); below that FedAvg merely slows down. The default
    4 reverses FedAvg for every f > 0.2 (at f = 0.2 it cancels the step)."""


@dataclass(frozen=True)
class ScaleConfig:
    """Scaling / model replacement: send λ·Δ (Bagdasaryan et al. 2020)."""

    factor: float = param(0.0, traceable=True)
    """λ >= 0; 0: the participant count n, Bagdasaryan's γ = n/η with server step η = 1,
    which replaces FedAvg's global model by the attacker's own local model."""


@dataclass(frozen=True)
class GaussianConfig:
    """Gaussian attack: send an update drawn from N(0, σ² I) (Xie et al. 2018)."""

    std: float = param(1.0, traceable=True)
    """σ > 0, per coordinate, in the params' units."""


@dataclass(frozen=True)
class RandomNoiseConfig:
    """FedPG-BR's random noise: Δ + u·c·(max Δ - min Δ), u ~ U(-1, 1) per coordinate."""

    scale: float = param(3.0, traceable=True)
    """c > 0, times the range of the participant's own update (FedPG-BR's code: 3)."""


@dataclass(frozen=True)
class AlieConfig:
    """A Little Is Enough (Baruch et al. 2019): the colluders send μ + z·σ of the benign
    participants' updates, per coordinate.
    """

    z: float = param(0.0, traceable=True)
    """z >= 0; 0: the paper's z_max = Φ⁻¹((n - s)/n), s = ⌊n/2 + 1⌋ - f, from the
    round's n valid participants of which f are Byzantine (logged as `attack/alie_z`)."""


@dataclass(frozen=True)
class IpmConfig:
    """Inner-product manipulation (Xie et al. 2020): send -ε·mean of the benign updates."""

    eps: float = param(0.1, traceable=True)
    """ε > 0: the paper's 0.1 breaks Krum and the median; a large ε (100) reverses FedAvg."""


def _positive(path: str, allow_zero: bool = False):
    def check(config: Any) -> None:
        value = config.attack
        for name in path.split(".")[1:]:
            value = getattr(value, name)
        ok = value >= 0 if allow_zero else value > 0
        require(ok, path, ">= 0" if allow_zero else "> 0", value)

    return check


SPECS = (
    AttackSpec(
        "sign_flip",
        "update",
        f"{MODULE}:sign_flip",
        _positive("attack.sign_flip.scale"),
        SignFlipConfig,
        "send -s·Δ (FedPG-BR, Fan 2021)",
    ),
    AttackSpec(
        "scale",
        "update",
        f"{MODULE}:scale",
        _positive("attack.scale.factor", allow_zero=True),
        ScaleConfig,
        "model replacement, send λ·Δ (Bagdasaryan 2020)",
    ),
    AttackSpec(
        "gaussian",
        "update",
        f"{MODULE}:gaussian",
        _positive("attack.gaussian.std"),
        GaussianConfig,
        "send N(0, σ²) noise as the update (Xie 2018)",
    ),
    AttackSpec("zero", "update", f"{MODULE}:zero", description="send a zero update (FedPG-BR)"),
    AttackSpec(
        "free_rider",
        "update",
        f"{MODULE}:free_rider",
        description="send back the global params, claiming the steps (Lin 2019)",
    ),
    AttackSpec(
        "random_noise",
        "update",
        f"{MODULE}:random_noise",
        _positive("attack.random_noise.scale"),
        RandomNoiseConfig,
        "Δ + U(-1, 1)·c·range(Δ) (FedPG-BR, Fan 2021)",
    ),
    AttackSpec(
        "alie",
        "update",
        f"{MODULE}:alie",
        _positive("attack.alie.z", allow_zero=True),
        AlieConfig,
        "colluders send benign μ + z·σ (A Little Is Enough, Baruch 2019)",
    ),
    AttackSpec(
        "ipm",
        "update",
        f"{MODULE}:ipm",
        _positive("attack.ipm.eps"),
        IpmConfig,
        "send -ε·benign mean (inner-product manipulation, Xie 2020)",
    ),
    AttackSpec(
        "nan",
        "update",
        f"{MODULE}:nan",
        description="send non-finite params (screening masks them before any rule)",
    ),
)
