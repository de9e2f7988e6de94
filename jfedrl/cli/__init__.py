"""The `jfedrl` command: loads the plugin modules, then runs `jfedrl.cli.app`.

A plugin module (`--plugin my_module`, or `plugins: [...]` in a config file, a
run folder's config.yaml or a sweep file's `base`) registers an algorithm, a
strategy, an env or a variant, and the config tree is assembled from the
registries when `jfedrl.config` is first imported. So the plugins are found and
imported here, before anything imports `jfedrl.config`; a resumed, evaluated or
compared run loads the plugins its config.yaml records.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

PLUGIN_FLAG = "--plugin"


def _recorded(path: Path) -> list[str]:
    """The `plugins` a config, run or sweep file records (a sweep file: its `base`'s)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []  # reported by the command that reads it
    if not isinstance(data, dict):
        return []
    names = data.get("plugins")
    if names is None and isinstance(data.get("base"), dict):
        names = data["base"].get("plugins")
    return [str(n) for n in names] if isinstance(names, list) else []


def _files(argv: list[str]) -> Iterator[Path]:
    """The config files an argument list names: YAML files, and run or sweep folders."""
    for arg in argv:
        if arg.startswith("-"):
            continue
        path = Path(arg)
        if path.suffix in (".yaml", ".yml") and path.is_file():
            yield path
        elif path.is_dir():
            for name in ("config.yaml", "sweep.yaml"):
                if (path / name).is_file():
                    yield path / name


def plugin_names(argv: list[str]) -> list[str]:
    """Every plugin module `argv` (and `$JFEDRL_PLUGINS`) asks for, in order, once each."""
    from jfedrl import plugins

    names = plugins.from_environment()
    for i, arg in enumerate(argv):
        if arg == PLUGIN_FLAG and i + 1 < len(argv):
            names.append(argv[i + 1])
        elif arg.startswith(PLUGIN_FLAG + "="):
            names.append(arg.split("=", 1)[1])
    for path in _files(argv):
        names += _recorded(path)
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> int:
    """Runs `jfedrl` with `argv` (None: this process's own arguments)."""
    from jfedrl import plugins

    try:
        plugins.load_modules(plugin_names(sys.argv[1:] if argv is None else argv))
    except ValueError as error:  # ConfigError: an unknown module
        print(f"jfedrl: error: {error}", file=sys.stderr)
        return 2
    from jfedrl.cli import app

    return app.main(argv)
