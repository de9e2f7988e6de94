"""Pytree helpers shared by the algorithms, the strategies and the round loop."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def tree_where(condition: jax.Array, new: Any, old: Any) -> Any:
    """`new` where the scalar `condition` holds, else `old`, leaf by leaf."""
    return jax.tree.map(lambda n, o: jnp.where(condition, n, o), new, old)
