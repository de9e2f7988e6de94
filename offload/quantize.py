"""Transfer precision of the params shipped to and from workers.

Only the federated params are quantised (the global params sent with a task
and the clients' new params sent back); optimiser and environment state
travel at full precision, so the error is confined to what the server
aggregates anyway. Seed 003 asks for smaller transfers to providers.

- `none`: float32 as computed.
- `float16`: IEEE half precision (relative error ~5e-4; values above 65504
  overflow to inf and the result is rejected as non-finite).
- `int8`: symmetric linear quantisation per leaf and per row (client):
  `q = round(x / s)`, `s = max|x| / 127`, as in Jacob et al. 2018,
  "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference" (without the zero point).

Encoded arrays live in flat `{name: array}` dicts so they can be stored in an
orbax checkpoint next to the rest of a task.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MODES = ("none", "float16", "int8")


class QuantError(NamedTuple):
    """What quantising a set of arrays cost."""

    raw_bytes: int
    """Bytes of the arrays at full precision."""
    encoded_bytes: int
    """Bytes actually shipped (including int8 scales)."""
    sq_error: float
    """Sum of squared errors (for a relative L2 error)."""
    sq_norm: float
    """Sum of squares of the original values."""
    max_abs_error: float

    @property
    def relative_error(self) -> float:
        """||decode(encode(x)) - x|| / ||x|| over every quantised value."""
        return float(np.sqrt(self.sq_error / self.sq_norm)) if self.sq_norm > 0 else 0.0

    def __add__(self, other: QuantError) -> QuantError:  # type: ignore[override]
        return QuantError(
            self.raw_bytes + other.raw_bytes,
            self.encoded_bytes + other.encoded_bytes,
            self.sq_error + other.sq_error,
            self.sq_norm + other.sq_norm,
            max(self.max_abs_error, other.max_abs_error),
        )


NO_ERROR = QuantError(0, 0, 0.0, 0.0, 0.0)


def encoded_spec(
    name: str, shape: tuple[int, ...], dtype: np.dtype, mode: str, rows: bool
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Names, shapes and dtypes that `encode` produces for one array.

    Args:
        name: the array's name in the flat dict.
        shape: its shape; `rows=True` means axis 0 is a client axis (one scale per row).
        dtype: its dtype; only floating arrays are quantised.
        mode: `none`, `float16` or `int8`.
        rows: quantise each row (client) with its own scale.

    Returns:
        `{name: (shape, dtype)}` of the encoded arrays.
    """
    dtype = np.dtype(dtype)
    if mode == "none" or not np.issubdtype(dtype, np.floating):
        return {name: (tuple(shape), dtype)}
    if mode == "float16":
        return {name: (tuple(shape), np.dtype(np.float16))}
    scale_shape = (shape[0],) if rows and len(shape) > 0 else ()
    return {
        name: (tuple(shape), np.dtype(np.int8)),
        name + "@scale": (scale_shape, np.dtype(np.float32)),
    }


def encode(
    name: str, x: np.ndarray, mode: str, rows: bool
) -> tuple[dict[str, np.ndarray], QuantError]:
    """Quantises one array; returns the encoded arrays and the error introduced."""
    x = np.asarray(x)
    if mode == "none" or not np.issubdtype(x.dtype, np.floating):
        return {name: x}, QuantError(x.nbytes, x.nbytes, 0.0, 0.0, 0.0)
    if mode == "float16":
        out = {name: x.astype(np.float16)}
    elif mode == "int8":
        axes = tuple(range(1, x.ndim)) if rows and x.ndim > 0 else None
        peak = np.max(np.abs(x), axis=axes) if x.size else np.zeros(x.shape[:1] if rows else ())
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        shaped = scale.reshape(scale.shape + (1,) * (x.ndim - scale.ndim))
        q = np.clip(np.rint(x / shaped), -127, 127).astype(np.int8)
        out = {name: q, name + "@scale": scale}
    else:
        raise ValueError(f"offload.quantize: {mode!r} is not allowed; allowed: {', '.join(MODES)}")
    decoded = decode(name, out, x.dtype, rows)
    diff = decoded.astype(np.float64) - x.astype(np.float64)
    error = QuantError(
        raw_bytes=x.nbytes,
        encoded_bytes=sum(a.nbytes for a in out.values()),
        sq_error=float(np.sum(np.square(diff))),
        sq_norm=float(np.sum(np.square(x.astype(np.float64)))),
        max_abs_error=float(np.max(np.abs(diff))) if diff.size else 0.0,
    )
    return out, error


def decode(name: str, arrays: dict[str, np.ndarray], dtype: np.dtype, rows: bool) -> np.ndarray:
    """Inverse of `encode` (up to the quantisation error), back to `dtype`."""
    data = np.asarray(arrays[name])
    scale_name = name + "@scale"
    if scale_name in arrays:
        scale = np.asarray(arrays[scale_name], np.float32)
        shaped = scale.reshape(scale.shape + (1,) * (data.ndim - scale.ndim))
        return (data.astype(np.float32) * shaped).astype(dtype)
    return data.astype(dtype)
