"""Jittable environments for federated RL, behind one registry.

`make(name)` returns a gymnax-style environment and its default `EnvParams`.
Every physical constant lives in `EnvParams`, so client heterogeneity is a
batched `EnvParams` (leading axis = client) and drift is a pure function of the
round. This package knows nothing of federation.

The interface every registered environment follows (gymnax 1.0.1):

    reset(key, params) -> (obs, state)
    step(key, state, action, params)
        -> (obs, state, reward, terminated, truncated, info)   # auto-resets;
                                                              # info["final_observation"]
    observation_space(params), action_space(params)           # Discrete has `.n`,
                                                              # Box has `.low/.high/.shape`

and its params carry `max_steps_in_episode`. Besides the factory, a registry
entry declares the environment's tunable physical parameters (with the ranges
of the `random` / `extreme` variants), how derived parameters follow them, the
parameters that drift by default, and how an impulse disturbance kicks its
state; `variants`, `drift` and `disturbance` build on that.

Importing `envs` loads no JAX (the CLI and `jfedrl.plugins` import
`envs.registry` before JAX may be configured): the built-in suites register
themselves on the registry's first use, and the re-exported building blocks
below are imported when first read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from envs.registry import Registry, UnknownName, did_you_mean

if TYPE_CHECKING:
    from envs.variants import Tunable

EnvFactory = Callable[..., tuple[Any, Any]]
DeriveFn = Callable[[Any], Any]
"""`params -> params` for ONE client: recomputes derived fields from their sources."""
ImpulseFn = Callable[[Any, Any, Any, float, Any], Any]
"""`(env, key, state, scale, params) -> state`: a random kick to the state's velocities."""


def _identity(params: Any) -> Any:
    return params


@dataclass(frozen=True)
class EnvSpec:
    """A registered environment: how to build it and what can vary across clients."""

    name: str
    factory: EnvFactory
    description: str = ""
    tunables: tuple[Tunable, ...] = ()
    """Physical parameters that variants sample, users override and drift moves."""
    derive: DeriveFn = _identity
    """Recomputes derived params (e.g. CartPole's `total_mass`) from their sources."""
    drift_params: tuple[str, ...] = ()
    """The parameters that drift when `drift_params` is not given."""
    impulse: ImpulseFn | None = None
    """The `impulse` disturbance for this env, or None if it has no velocities to kick."""
    impulse_doc: str = ""
    """What `impulse` kicks and in which units (for the docs and `describe`)."""
    backends: tuple[str, ...] = ()
    """Physics backends the factory accepts as `backend=` (Brax envs), first is default."""
    listing: Callable[[], dict[str, Any]] | None = None
    """`describe`'s `observation_shape`, `observation_dtype`, `action_space` and `params`
    without building the env, for envs whose build is slow (a Brax system compiles
    its MuJoCo model); None: `describe` builds it. Tests check it against a build."""

    @property
    def tunable_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tunables)

    def tunable(self, name: str) -> Tunable:
        for t in self.tunables:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def variants(self) -> tuple[str, ...]:
        """`default` only if nothing is tunable, else every registered variant."""
        from envs.variants import VARIANTS

        return VARIANTS.names() if self.tunables else ("default",)


ENVS: Registry[EnvSpec] = Registry(
    "environment",
    "env.name",
    modules=("envs.brax_envs", "envs.classic", "envs.gridworld", "envs.minatar"),
)
"""Every environment by name; the built-in suites register themselves on first use."""


def register(
    name: str,
    factory: EnvFactory,
    description: str = "",
    **metadata: Any,
) -> None:
    """Registers `factory(**options) -> (env, default_params)` under `name`.

    Args:
        name: registry name (e.g. `CartPole-v1`, `brax-hopper`).
        factory: builds the environment and its default (unbatched) params.
        description: one line for `jfedrl envs`.
        **metadata: further `EnvSpec` fields (`tunables`, `derive`, `drift_params`,
            `impulse`, `impulse_doc`, `backends`, `listing`).
    """
    entry = EnvSpec(name, factory, description, **metadata)
    unknown = set(entry.drift_params) - set(entry.tunable_names)
    if unknown:
        raise ValueError(f"{name}: drift_params {sorted(unknown)} are not tunable params")
    ENVS.register(name, entry)


def names() -> tuple[str, ...]:
    """All registered environment names, sorted."""
    return ENVS.names()


def spec(name: str) -> EnvSpec:
    """The registry entry for `name`; `UnknownName` (a `ValueError`) naming `env.name`."""
    return ENVS.get(name)


def make(name: str, **options: Any) -> tuple[Any, Any]:
    """Builds environment `name`; returns `(env, default_params)`.

    Args:
        name: a registered name.
        **options: factory options; only `backend=` for Brax environments.
    """
    entry = spec(name)
    if "backend" in options and options["backend"] not in entry.backends:
        allowed = ", ".join(entry.backends) if entry.backends else "none (not a Brax env)"
        raise ValueError(
            f"{name}: backend {options['backend']!r} not allowed; allowed: {allowed}."
            + did_you_mean(options["backend"], entry.backends)
        )
    return entry.factory(**options)


def batch_params(params: Any, num_clients: int) -> Any:
    """Stacks `num_clients` copies of `params` on a new leading client axis."""
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda x: jnp.stack([jnp.asarray(x)] * num_clients), params)


def space_string(space: Any) -> str:
    """A short description of a gymnax space: `Discrete(2)` or `Box(1,) [-2, 2]`."""
    import numpy as np

    if hasattr(space, "n"):
        return f"Discrete({int(space.n)})"
    shape = tuple(int(s) for s in space.shape)
    low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)

    def bound(x: Any) -> str:
        if x.size and np.all(x == x.flat[0]):
            return f"{float(x.flat[0]):g}"
        return "[" + ", ".join(f"{float(v):g}" for v in x.ravel()) + "]"

    return f"Box{shape} [{bound(low)}, {bound(high)}]"


def _built_listing(entry: EnvSpec) -> dict[str, Any]:
    """`EnvSpec.listing`'s fields, from the built env."""
    import jax
    import numpy as np

    env, params = make(entry.name)
    obs = jax.eval_shape(env.reset, jax.random.PRNGKey(0), params)[0]
    defaults = {}
    for t in entry.tunables:
        value = np.asarray(getattr(params, t.name))
        defaults[t.name] = int(value) if t.integer else float(value)
    return {
        "observation_shape": tuple(int(s) for s in obs.shape),
        "observation_dtype": str(np.dtype(obs.dtype)),
        "action_space": space_string(env.action_space(params)),
        "params": defaults,
    }


def describe(name: str, build: bool = False) -> dict[str, Any]:
    """What `jfedrl envs` prints about `name`.

    Args:
        name: a registered name.
        build: build the env even where its entry lists it without (`EnvSpec.listing`).

    Returns:
        A dict with `name`, `description`, `observation_shape`,
        `observation_dtype`, `action_space` (short string), `params` (tunable
        param -> default value), `variants`, `drift_params` (the default drifting
        set) and `disturbances` (the supported disturbance kinds).
    """
    entry = spec(name)
    listed = entry.listing() if entry.listing is not None and not build else None
    return {
        "name": name,
        "description": entry.description,
        **(listed if listed is not None else _built_listing(entry)),
        "variants": list(entry.variants),
        "drift_params": list(entry.drift_params),
        "disturbances": ["none", "obs_noise"] + (["impulse"] if entry.impulse else []),
    }


#: Re-exported building blocks: attribute -> module, imported when first read (JAX).
_LAZY = {
    "DISTURBANCES": "envs.disturbance",
    "check_disturbance": "envs.disturbance",
    "disturb": "envs.disturbance",
    "DRIFTS": "envs.drift",
    "make_drift": "envs.drift",
    "VARIANTS": "envs.variants",
    "ParamError": "envs.variants",
    "Tunable": "envs.variants",
    "check_overrides": "envs.variants",
    "client_params": "envs.variants",
    "param_table": "envs.variants",
}


#: Submodules read as attributes (`envs.drift.resolve_drift_params`), imported when first read.
_SUBMODULES = ("brax_envs", "classic", "disturbance", "drift", "gridworld", "minatar", "variants")


def __getattr__(attribute: str) -> Any:
    if attribute in _SUBMODULES:
        return importlib.import_module(f"envs.{attribute}")
    if attribute not in _LAZY:
        raise AttributeError(f"module 'envs' has no attribute {attribute!r}")
    return getattr(importlib.import_module(_LAZY[attribute]), attribute)


__all__ = [
    "DISTURBANCES",
    "DRIFTS",
    "ENVS",
    "VARIANTS",
    "EnvSpec",
    "ParamError",
    "Tunable",
    "batch_params",
    "check_disturbance",
    "check_overrides",
    "client_params",
    "describe",
    "disturb",
    "make",
    "make_drift",
    "names",
    "param_table",
    "register",
    "space_string",
    "UnknownName",
]
