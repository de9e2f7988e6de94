"""Heterogeneous, drifting clients through the real CLI, and `jfedrl envs`."""

import json

from jfedrl.cli import main as cli_main


def test_random_variant_with_drift_runs_through_the_cli_and_logs_client_params(tmp_path, capsys):
    run_dir = tmp_path / "hetero"
    code = cli_main(
        [
            "train",
            "--run-dir",
            str(run_dir),
            "--variant",
            "random",
            "--drift",
            "sinusoidal",
            "--env.drift-period",
            "4",
            "--clients",
            "3",
            "--rounds",
            "4",
            "--local-updates",
            "1",
            "--ppo.num-envs",
            "2",
            "--ppo.num-steps",
            "16",
            "--ppo.num-minibatches",
            "2",
            "--ppo.hidden-sizes",
            "8",
            "--log.rounds-per-block",
            "2",
            "--log.tensorboard",
            "false",
            "--log.plot",
            "false",
            "--no-progress",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    base = json.loads((run_dir / "env_params.json").read_text())
    lengths = base["length"]
    assert len(lengths) == 3 and len(set(lengths)) == 3  # every client has its own pole
    assert all(0.25 <= v <= 0.75 for v in lengths)
    drifted = [json.loads(x) for x in (run_dir / "env_params.jsonl").read_text().splitlines()]
    assert [d["round"] for d in drifted] == [2, 4]
    changed = any(d["params"][name] != base[name] for d in drifted for name in base)
    assert changed, "the drift schedule left every parameter unchanged"
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4 and records[-1]["eval_return"] is not None


def test_envs_command_lists_every_registered_env(capsys):
    import envs

    assert cli_main(["envs"]) == 0
    out = capsys.readouterr().out
    for name in envs.names():
        assert name in out
    assert "variants" in out and "params" in out


def test_envs_lists_without_importing_brax_or_mujoco():
    """Listing reads the registry's metadata; building Brax models took most of its time."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "from jfedrl.cli import main\n"
        "assert main(['envs']) == 0\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('brax', 'mujoco'))\n"
        "print('LOADED', loaded)\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr
    assert "brax-ant\n" in done.stdout and "observation (27,) float32" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "LOADED []"
