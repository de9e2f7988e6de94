"""Docs that must match the code."""

import importlib.metadata
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_config_reference_is_up_to_date():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_config_docs
    finally:
        sys.path.pop(0)
    assert (ROOT / "docs" / "config.md").read_text() == gen_config_docs.render(), (
        "docs/config.md is stale: run `python scripts/gen_config_docs.py`"
    )


def _ci_extracted_command() -> str:
    """The test command exactly as `.ci/run` extracts it (its own awk line, run here)."""
    script = (ROOT / ".ci" / "run").read_text()
    awk = re.search(r"cmd=\$\(awk '([^']+)' README.md\)", script)
    assert awk, "cannot find the README extraction in .ci/run"
    out = subprocess.run(
        ["awk", awk.group(1), "README.md"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return out.stdout.strip()


def _steps(command: str) -> list[list[str]]:
    return [shlex.split(step) for step in command.split("&&")]


def _readme_block(marker: str) -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(rf"<!-- {marker} -->\n```\w*\n(.+?)\n```", readme, re.S)
    assert block, marker
    assert "\n" not in block.group(1), f"{marker}: .ci/run reads one line only"
    return block.group(1)


def test_readme_test_command_is_what_ci_runs_and_is_valid():
    command = _readme_block("test-command")
    assert _ci_extracted_command() == command
    venv, install, test = _steps(command)
    assert venv == ["python3", "-m", "venv", ".venv"]
    assert install[:3] == [".venv/bin/pip", "install", "-e"]
    extras = re.fullmatch(r"\.\[([\w,]+)\]", install[3]).group(1).split(",")
    metadata = importlib.metadata.metadata("jfedrl")
    assert set(extras) <= set(metadata.get_all("Provides-Extra")), extras
    requires = metadata.get_all("Requires-Dist")
    assert any(r.startswith("pytest-xdist") and 'extra == "test"' in r for r in requires)
    assert test[:3] == [".venv/bin/python", "-m", "pytest"]
    # pytest accepts its options (xdist's -n/--dist included): collect one test with them.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *test[3:],
            "--collect-only",
            "-p",
            "no:cacheprovider",
            "tests/test_docs.py::test_config_reference_is_up_to_date",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_readme_train_command_is_a_valid_default_run():
    from jfedrl.cli.app import build_parser, config_from_args
    from jfedrl.config import Config
    from jfedrl.validation import validate

    venv, install, train = _steps(_readme_block("train-command"))
    assert venv == ["python3", "-m", "venv", ".venv"]
    assert install == [".venv/bin/pip", "install", "-e", "."]
    assert train[0] == ".venv/bin/jfedrl"
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert scripts["jfedrl"].value == "jfedrl.cli:main"
    config = config_from_args(build_parser().parse_args(train[1:]))
    assert validate(config) == Config()  # the documented default run, nothing else


def test_cli_help_lists_every_config_field():
    out = subprocess.run(
        [sys.executable, "-m", "jfedrl.cli", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    from jfedrl.config import Config
    from jfedrl.schema.convert import flat_fields

    for path, _, _ in flat_fields(Config):
        flag = "--plugin" if path == "plugins" else "--" + path.replace("_", "-")  # repeatable
        assert flag in out, path
