"""Docs that must match the code."""

import re
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


def test_readme_commands_exist():
    readme = (ROOT / "README.md").read_text()
    train = re.search(r"<!-- train-command -->\n```\w*\n(.+)\n", readme)
    test = re.search(r"<!-- test-command -->\n```\w*\n(.+)\n", readme)
    assert train and "jfedrl train" in train.group(1)
    assert test and "pytest" in test.group(1)


def test_cli_help_lists_every_config_field():
    out = subprocess.run(
        [sys.executable, "-m", "jfedrl.cli", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    from jfedrl.config import Config, flat_fields

    for path, _, _ in flat_fields(Config):
        assert "--" + path.replace("_", "-") in out, path
