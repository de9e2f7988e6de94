"""What a run ends with: the summary lines, wall time without compile, the curve (issue 20)."""

from __future__ import annotations

import json

import jax
import numpy as np
from PIL import Image

from jfedrl.cli import main as cli_main
from jfedrl.round.simulator import make_simulator
from jfedrl.run import runner
from jfedrl.run.callbacks import Run, curve_title
from jfedrl.run.outputs import drift_signal, plot_learning_curve
from tests.helpers import tiny_config, with_run_dir


def _timed_fake_block(tmp_path, monkeypatch, executor, clock):
    """One 2-round block of `executor` on the fake `clock`, finished after 5 s of the run."""
    config = with_run_dir(tiny_config(federation__rounds=2), tmp_path)
    simulator = make_simulator(config)
    state = simulator.init(jax.random.PRNGKey(0))
    runner.sim_eval(simulator, state, runner.eval_key_of(config))  # compiled before the clock
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock[0])
    state, metrics, tick, compile_seconds = runner.timed_block(executor, state, 2)
    run = Run(config, simulator, tmp_path, executor)
    return runner.finish_block(run, [], state, metrics, 0, 5.0, tick, compile_seconds)


def test_wall_seconds_leave_the_compile_out(tmp_path, monkeypatch):
    """A fake clock: the block waits 100 s for its compile, then trains 2 s."""
    clock = [1000.0]

    class Compiling:
        compile_seconds = 0.0

        def run_block(self, state, num_rounds):
            clock[0] += 100.0
            self.compile_seconds += 100.0
            clock[0] += 2.0
            return state, {"train_return_mean": np.zeros(num_rounds)}

    block, wall = _timed_fake_block(tmp_path, monkeypatch, Compiling(), clock)
    assert [r["wall_seconds"] for r in block.records] == [6.0, 7.0] and wall == 7.0
    assert block.records[0]["compile_seconds"] == 100.0


def test_a_compile_waited_for_before_the_block_is_left_out_too(tmp_path, monkeypatch):
    """The memory check waits 100 s for the block's compile before it runs; it trains 2 s."""
    clock = [1100.0]

    class WaitedAhead:
        compile_seconds, waited_ahead = 0.0, 100.0  # the clock went 1000 -> 1100 waiting

        def run_block(self, state, num_rounds):
            self.compile_seconds += self.waited_ahead
            self.waited_ahead = 0.0
            clock[0] += 2.0
            return state, {"train_return_mean": np.zeros(num_rounds)}

    block, wall = _timed_fake_block(tmp_path, monkeypatch, WaitedAhead(), clock)
    assert [r["wall_seconds"] for r in block.records] == [6.0, 7.0] and wall == 7.0
    assert block.records[0]["compile_seconds"] == 100.0


def test_a_real_run_has_positive_increasing_wall_seconds(tmp_path):
    """With the memory check's wait for the compiled block, as `jfedrl train` runs."""
    config = with_run_dir(tiny_config(federation__rounds=2, log__rounds_per_block=1), tmp_path)
    result = runner.train(config, quiet=True)
    walls = [r["wall_seconds"] for r in result.records]
    assert walls[0] > 0 and all(b > a for a, b in zip(walls, walls[1:], strict=False))
    assert result.records[0]["compile_seconds"] > 0


def _fake_run(folder, drifting=True):
    records = [
        {"round": r, "env_steps": 64 * r, "train_return_mean": 10.0 * r, "eval_return": None}
        for r in (1, 2, 3, 4)
    ]
    records[1]["eval_return"], records[3]["eval_return"] = 20.0, 15.0
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "env_params.json").write_text(json.dumps({"length": [0.5, 1.0], "tau": [0, 0]}))
    if drifting:
        lines = [
            {"round": 2, "params": {"length": [0.55, 1.1], "tau": [0, 0]}},
            {"round": 4, "params": {"length": [0.45, 0.8], "tau": [0, 0]}},
        ]
        (folder / "env_params.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return records


def test_the_drift_signal_is_each_params_mean_relative_change(tmp_path):
    records = _fake_run(tmp_path)
    steps, change = drift_signal(tmp_path, ("length",), records)["length"]
    np.testing.assert_allclose(steps, [0, 128, 256])
    np.testing.assert_allclose(change, [0.0, 0.1, -0.15])  # (0.1 + 0.1) / 2, (-0.1 - 0.2) / 2
    assert drift_signal(tmp_path, (), records) == {}


def test_a_drifting_runs_curve_has_the_drift_axis_under_it(tmp_path):
    (tmp_path / "still").mkdir()
    _fake_run(tmp_path / "still", drifting=False)
    _fake_run(tmp_path)
    with_drift = plot_learning_curve(tmp_path, "t", ("length",))
    without = plot_learning_curve(tmp_path / "still", "t", ("length",))
    assert Image.open(with_drift).height > Image.open(without).height  # the second axis


def test_the_curve_title_names_the_setup():
    config = tiny_config(env__variant="random", env__drift="sinusoidal", strategy__name="fedadam")
    title = curve_title(config)
    for part in ("CartPole-v1", "ppo", "fedadam", "3 clients", "variant random", "sinusoidal"):
        assert part in title, title
    assert "drift" not in curve_title(tiny_config())


def test_the_run_ends_with_its_summary_on_stdout_and_in_train_log(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["train", "--run-dir", str(run_dir), "--clients", "2", "--rounds", "4"]
    argv += ["--local-updates", "1", "--ppo.num-envs", "2", "--ppo.num-steps", "16"]
    argv += ["--ppo.num-minibatches", "2", "--ppo.hidden-sizes", "8"]
    argv += ["--log.rounds-per-block", "2", "--log.tensorboard", "false", "--no-progress"]
    argv += ["--drift", "sinusoidal", "--env.drift-period", "4", "--quiet"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["eval_return"], r["round"]) for r in records if r.get("eval_return") is not None]
    best = max(evals, key=lambda e: (e[0], -e[1]))
    lines = [
        f"global policy eval return: final {evals[-1][0]:.1f}, best {best[0]:.1f} "
        f"(round {best[1]})",
        f"learning curve: {run_dir / 'learning_curve.png'}",
        f"run folder: {run_dir}",
    ]
    log = (run_dir / "train.log").read_text()
    for line in lines:
        assert line in out.splitlines(), out
        assert line in log, log
    assert "finished at round 4: 256 env steps" in out and "s compiling" in out
    assert Image.open(run_dir / "learning_curve.png").height > 4.2 * 110  # with the drift axis
