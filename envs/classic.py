"""Classic-control tasks from gymnax, registered under their Gym names."""

from __future__ import annotations

import gymnax

import envs

CLASSIC_CONTROL = (
    "CartPole-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "Pendulum-v1",
    "MountainCarContinuous-v0",
)


def _gymnax_factory(name: str):
    def factory():
        return gymnax.make(name)

    return factory


for _name in CLASSIC_CONTROL:
    envs.register(_name, _gymnax_factory(_name), description="gymnax classic control")
