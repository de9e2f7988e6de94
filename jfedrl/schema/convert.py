"""Frozen dataclass trees to and from YAML, mappings and dotted flags.

Generic: it knows dataclasses, `bool`/`int`/`float`/`str`, `tuple[T, ...]` and
`dict` fields, and the attribute docstrings under fields, nothing of any one
schema. Every error is a `ConfigError` naming the dotted field and, for an
unknown name, the allowed ones.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import inspect
import math
import textwrap
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from jfedrl.schema.checks import ConfigError
from jfedrl.schema.fields import facts

T = typing.TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every field (the modules use postponed annotations)."""
    return typing.get_type_hints(cls)


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Converts a YAML/CLI value to the field's declared type, or raises."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return from_dict(value, annotation, prefix=path + ".")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if annotation is int:
        return _integer(path, value)
    if annotation is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{path}: must be a finite number, got {value!r}")
        return number
    if annotation is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return tuple(_coerce(f"{path}[{i}]", v, item_type) for i, v in enumerate(value))
    if origin is dict or annotation is dict:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) or {}
            except yaml.YAMLError as error:
                raise ConfigError(f"{path}: not valid YAML: {_yaml_reason(error)}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    return value


#: The magnitude every int field stays below: a 64-bit integer, what NumPy and JAX hold.
INT_LIMIT = 2**63


def _integer(path: str, value: Any) -> int:
    """An int field's value: exact for digits (`10**30` is not rounded through a float),
    and within a signed 64-bit integer, so that no later conversion overflows.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    number: int | None = value if isinstance(value, int) else None
    if number is None and isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = int(value.strip())
    if number is None:
        try:
            as_float = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{path}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():  # also nan and inf
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        number = int(as_float)
    if not -INT_LIMIT <= number < INT_LIMIT:
        raise ConfigError(f"{path}: must be an integer in [-2**63, 2**63), got {_short(value)}")
    return number


def _short(value: Any) -> str:
    """`repr(value)`, with a long number cut to its digit count (a 400-digit int is one line)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:12]}... ({len(text)} characters)"


def _unknown_field(path: str, name: str, allowed: list[str]) -> ConfigError:
    # Imported here: `envs/__init__` imports JAX, and this module must stay light.
    from envs.registry import did_you_mean

    return ConfigError(
        f"{path}: unknown config field; allowed: {', '.join(allowed)}."
        + did_you_mean(name, allowed)
    )


def _nest_dotted(items: Any, cls: type, prefix: str) -> dict[str, Any]:
    """Mapping items with dotted keys nested: `algo.ppo.learning_rate: v` is `algo: {ppo: ...}`.

    Dotted keys, nested mappings and a mix of both give the same tree (the sweep
    file's grid and setups use dotted paths too). Keys are normalised (`-` to `_`);
    two items for one field merge if both are mappings of a section (or of a
    `dict` field), else the field is given twice: a `ConfigError`.
    """
    hints = _field_types(cls)
    out: dict[str, Any] = {}
    for key, value in items:
        head, dot, rest = str(key).partition(".")
        name = head.replace("-", "_")
        if dot:
            value = {rest: value}
        if name not in out:
            out[name] = value
            continue
        annotation = hints.get(name)
        both = isinstance(out[name], Mapping) and isinstance(value, Mapping)
        if both and dataclasses.is_dataclass(annotation):
            pairs = [*out[name].items(), *value.items()]
            out[name] = _nest_dotted(pairs, annotation, f"{prefix}{name}.")
        elif both and (annotation is dict or typing.get_origin(annotation) is dict):
            twice = sorted(set(out[name]) & set(value))
            if twice:
                raise ConfigError(f"{prefix}{name}.{twice[0]}: given twice")
            out[name] = {**out[name], **value}
        else:
            raise ConfigError(f"{prefix}{name}: given twice")
    return out


def from_dict(data: Mapping[str, Any], cls: type[T], prefix: str = "") -> T:
    """Builds dataclass `cls` from a nested mapping over its defaults; unknown keys are errors.

    Args:
        data: field name (`-` or `_`) -> value, nested for dataclass fields; a key may
            also be a dotted path (`ppo.learning_rate` inside `algo`), nested or not.
        cls: the dataclass to build.
        prefix: dotted path of `cls` inside the whole tree, for error messages.
    """
    hints = _field_types(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in _nest_dotted(data.items(), cls, prefix).items():
        if name not in allowed:
            raise _unknown_field(f"{prefix}{name}", name, allowed)
        kwargs[name] = _coerce(prefix + name, value, hints[name])
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass tree as plain YAML-friendly data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def replace_path(
    config: Any, dotted: str, value: Any, _prefix: str = "", *, coerce: bool = True
) -> Any:
    """Returns `config` with the field at `a.b.c` replaced.

    The value is coerced to the field's type, unless `coerce=False`: then it is set as
    it is (a traced scalar inside a sweep's program, `jfedrl.experiments.traced`).
    """
    head, _, rest = dotted.partition(".")
    head = head.replace("-", "_")
    here = _prefix + head
    names = [f.name for f in dataclasses.fields(config)]
    if head not in names:
        raise _unknown_field(here, head, names)
    current = getattr(config, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"{here}: has no sub-fields")
        new = replace_path(current, rest, value, here + ".", coerce=coerce)
    elif coerce:
        new = _coerce(here, value, _field_types(type(config))[head])
    else:
        new = value
    return dataclasses.replace(config, **{head: new})


def flat_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Every leaf field as `(dotted.path, type, docstring)`, for the CLI and docs.

    The docstring is the attribute docstring under the field, or its `doc` fact
    where the class is generated (the sections assembled in `jfedrl.config`).
    """
    out = []
    docs = _field_docs(cls)
    for f in dataclasses.fields(cls):
        annotation = _field_types(cls)[f.name]
        path = prefix + f.name
        if dataclasses.is_dataclass(annotation):
            out.extend(flat_fields(annotation, path + "."))
        else:
            out.append((path, annotation, docs.get(f.name) or facts(f).doc))
    return out


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field).

    Cached: `inspect.getsource` parses the class's whole module, and the CLI, the
    docs and every flag lookup ask for the same classes again and again.
    """
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def load_yaml(path: str | Path, cls: type[T]) -> T:
    """Loads dataclass `cls` from a (possibly partial) YAML mapping over its defaults."""
    return from_dict(read_yaml_mapping(path), cls)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping a config YAML file holds; a `ConfigError` naming the file if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(
            f"config file {str(path)!r} is not valid YAML: {_yaml_reason(error)}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def _yaml_reason(error: yaml.YAMLError) -> str:
    """A YAML syntax error on one line: what is wrong, and where."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def save_yaml(config: Any, path: str | Path) -> None:
    """Writes a dataclass tree as YAML, fields in declaration order."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def override(config: T, changes: Mapping[str, Any]) -> T:
    """`config` with each `dotted.path: value` of `changes` replaced, in order (values coerced)."""
    for path, value in changes.items():
        config = replace_path(config, path, value)
    return config
