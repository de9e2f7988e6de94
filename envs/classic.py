"""Classic-control tasks from gymnax, registered under their Gym names.

The dynamics are gymnax's own (so default params reproduce gymnax exactly);
this module declares what may vary across clients. Ranges follow Packer et al.
2018, "Assessing Generalization in Deep Reinforcement Learning" (Table 1 and
the `sunblaze_envs` code): `random` around the default, `extreme` outside it.
Where the paper has no range (Pendulum's `g`, MountainCarContinuous's `power`)
we use the paper's relative widths; see docs/environments.md.
"""

from __future__ import annotations

import math

import gymnax
import jax
import jax.numpy as jnp

import envs
from envs.variants import Tunable

CLASSIC_CONTROL = (
    "CartPole-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "Pendulum-v1",
    "MountainCarContinuous-v0",
)

# Packer et al.'s relative ranges for masses, lengths and inertias: x [0.75, 1.25]
# and x ([0.5, 0.75] u [1.25, 1.5]) of the default.
_REL_RANDOM = (0.75, 1.25)
_REL_EXTREME = ((0.5, 0.75), (1.25, 1.5))


def _relative(name: str, default: float, doc: str) -> Tunable:
    return Tunable(
        name,
        random=(_REL_RANDOM[0] * default, _REL_RANDOM[1] * default),
        extreme=tuple((lo * default, hi * default) for lo, hi in _REL_EXTREME),
        bounds=(1e-6, float("inf")),
        doc=doc,
    )


def _positive(name: str, random, extreme, doc: str) -> Tunable:
    return Tunable(name, random=random, extreme=extreme, bounds=(1e-6, float("inf")), doc=doc)


def _gymnax_factory(name: str):
    def factory():
        return gymnax.make(name)

    return factory


def _cartpole_derive(params):
    """CartPole's derived constants follow the masses and the (half) pole length."""
    return params.replace(
        total_mass=params.masscart + params.masspole,
        polemass_length=params.masspole * params.length,
    )


def _acrobot_derive(params):
    """The links' centres of mass sit at half their lengths (0.5 by default, as in Gym)."""
    return params.replace(
        link_com_pos_1=0.5 * params.link_length_1,
        link_com_pos_2=0.5 * params.link_length_2,
    )


def _kick(fields: dict[str, float]):
    """An impulse adding `scale * reference * N(0, 1)` to each named state velocity."""

    def impulse(env, key, state, scale, params):
        del env, params
        keys = jax.random.split(key, len(fields))
        updates = {}
        for k, (field, reference) in zip(keys, fields.items(), strict=True):
            value = getattr(state, field)
            kick = scale * reference * jax.random.normal(k, jnp.shape(value))
            updates[field] = (value + kick).astype(jnp.result_type(value))
        return state.replace(**updates)

    return impulse


envs.register(
    "CartPole-v1",
    _gymnax_factory("CartPole-v1"),
    "gymnax classic control: balance a pole on a cart (Barto et al. 1983)",
    tunables=(
        Tunable(
            "force_mag",
            random=(5.0, 15.0),
            extreme=((1.0, 5.0), (15.0, 20.0)),
            bounds=(-math.inf, math.inf),
            clusters=(10.0, -10.0),
            doc="push force [N] (Packer et al.); negative: mirrored actions (the clustered "
            "variants' odd groups)",
        ),
        _positive(
            "length",
            (0.25, 0.75),
            ((0.05, 0.25), (0.75, 1.0)),
            "half pole length [m] (Packer et al.)",
        ),
        _positive(
            "masspole", (0.05, 0.5), ((0.01, 0.05), (0.5, 1.0)), "pole mass [kg] (Packer et al.)"
        ),
        _relative("masscart", 1.0, "cart mass [kg] (Packer et al.'s relative mass ranges)"),
        _relative("gravity", 9.8, "gravitational acceleration [m/s^2]"),
    ),
    derive=_cartpole_derive,
    drift_params=("force_mag", "length", "masspole"),
    impulse=_kick({"x_dot": 1.0, "theta_dot": 1.0}),
    impulse_doc="adds scale * N(0, 1) to the cart velocity [m/s] and the pole's angular "
    "velocity [rad/s]",
)

envs.register(
    "Acrobot-v1",
    _gymnax_factory("Acrobot-v1"),
    "gymnax classic control: swing up a two-link pendulum (Sutton 1996)",
    tunables=(
        _relative("link_length_1", 1.0, "first link length [m] (Packer et al.)"),
        _relative("link_length_2", 1.0, "second link length [m] (Packer et al.)"),
        _relative("link_mass_1", 1.0, "first link mass [kg] (Packer et al.)"),
        _relative("link_mass_2", 1.0, "second link mass [kg] (Packer et al.)"),
        _relative("link_moi", 1.0, "links' moment of inertia (Packer et al.)"),
    ),
    derive=_acrobot_derive,
    drift_params=("link_length_1", "link_mass_1", "link_mass_2"),
    impulse=_kick({"velocity_1": 1.0, "velocity_2": 1.0}),
    impulse_doc="adds scale * N(0, 1) to both joint velocities [rad/s]",
)

envs.register(
    "MountainCar-v0",
    _gymnax_factory("MountainCar-v0"),
    "gymnax classic control: drive an underpowered car up a hill (Moore 1990)",
    tunables=(
        _positive(
            "force",
            (0.0005, 0.005),
            ((0.0001, 0.0005), (0.005, 0.01)),
            "engine force (Packer et al.)",
        ),
        _positive(
            "gravity",
            (0.001, 0.005),
            ((0.0005, 0.001), (0.005, 0.01)),
            "gravity term, Packer et al.'s 'mass'",
        ),
    ),
    drift_params=("force", "gravity"),
    impulse=_kick({"velocity": 0.01}),
    impulse_doc="adds scale * 0.01 * N(0, 1) to the velocity (max speed 0.07)",
)

envs.register(
    "MountainCarContinuous-v0",
    _gymnax_factory("MountainCarContinuous-v0"),
    "gymnax classic control: MountainCar with a continuous throttle",
    tunables=(
        _positive(
            "power",
            (0.00075, 0.0075),
            ((0.00015, 0.00075), (0.0075, 0.015)),
            "engine power (Packer et al.'s MountainCar force ranges, relative)",
        ),
        _positive(
            "gravity",
            (0.001, 0.005),
            ((0.0005, 0.001), (0.005, 0.01)),
            "gravity term, Packer et al.'s 'mass'",
        ),
    ),
    drift_params=("power", "gravity"),
    impulse=_kick({"velocity": 0.01}),
    impulse_doc="adds scale * 0.01 * N(0, 1) to the velocity (max speed 0.07)",
)

envs.register(
    "Pendulum-v1",
    _gymnax_factory("Pendulum-v1"),
    "gymnax classic control: swing up and hold an inverted pendulum",
    tunables=(
        _relative("m", 1.0, "pendulum mass [kg] (Packer et al.)"),
        _relative("l", 1.0, "pendulum length [m] (Packer et al.)"),
        _relative("g", 10.0, "gravitational acceleration [m/s^2]"),
    ),
    drift_params=("m", "l"),
    impulse=_kick({"theta_dot": 1.0}),
    impulse_doc="adds scale * N(0, 1) to the angular velocity [rad/s] (max speed 8)",
)
