"""`jfedrl eval`: a run's checkpoint evaluates to the run's own last eval_return."""

from __future__ import annotations

import numpy as np
import pytest

from jfedrl.cli import main as cli_main
from jfedrl.experiments import evaluate
from jfedrl.run import runner
from jfedrl.schema.checks import ConfigError
from tests.helpers import tiny_config, with_run_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    return runner.train(with_run_dir(tiny_config(), run_dir), progress=False, quiet=True)


def test_eval_reproduces_the_runs_last_eval_return(trained, tmp_path):
    result = evaluate.evaluate_run(trained.run_dir)
    assert result.round == 4 and result.returns.shape == (3, 2)
    assert result.mean == pytest.approx(trained.final_eval_return, rel=1e-6)
    chosen = evaluate.evaluate_run(trained.run_dir, clients=[2, 0])
    np.testing.assert_allclose(chosen.returns, result.returns[[2, 0]])
    md = evaluate.save(chosen, tmp_path)
    assert md.name == "round_4_global.md" and "| 2 |" in md.read_text()
    assert (tmp_path / "round_4_global.csv").read_text().count("\n") == 1 + 2 * 2


def test_local_and_global_tables_of_one_checkpoint_keep_both(trained, tmp_path):
    written = {}
    for policy in ("global", "local"):
        result = evaluate.evaluate_run(trained.run_dir, clients=[0], policy=policy)
        written[policy] = evaluate.save(result, tmp_path).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "round_4_global.csv",
        "round_4_global.md",
        "round_4_local.csv",
        "round_4_local.md",
    ]
    assert (tmp_path / "round_4_global.md").read_text() == written["global"]
    assert written["local"].startswith("local policy of")


def test_video_of_an_env_without_a_renderer_fails_before_any_evaluation(
    tmp_path, monkeypatch, capsys
):
    from jfedrl import cli

    def evaluated(*args, **kwargs):
        raise AssertionError("evaluated before the --video check")

    monkeypatch.setattr(evaluate, "evaluate_run", evaluated)
    (tmp_path / "config.yaml").write_text("env:\n  name: brax-ant\n")
    assert cli.main(["eval", str(tmp_path), "--video"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("jfedrl: error: --video: brax-ant: Brax video is not supported")
    assert error.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # nothing written


def test_eval_names_a_bad_client_id(trained):
    with pytest.raises(ConfigError, match="--clients: ids must be in 0..2"):
        evaluate.evaluate_run(trained.run_dir, clients=[3])


def test_local_policy_evaluates_each_chosen_clients_own_params(trained):
    import jax

    from jfedrl.round.simulator import make_simulator
    from jfedrl.run.runner import eval_key_of, sim_eval

    result = evaluate.evaluate_run(trained.run_dir, clients=[2, 0], policy="local")
    assert result.policy == "local" and result.returns.shape == (2, 2)
    assert result.table().startswith("local policy of")
    config = tiny_config()
    simulator = make_simulator(config)
    state = trained.state
    for row, client in zip(result.returns, [2, 0], strict=True):
        own = jax.tree.map(lambda x, c=client: x[c], state.clients.params)
        returns = sim_eval(simulator, state.replace(global_params=own), eval_key_of(config))
        np.testing.assert_allclose(row, np.asarray(returns)[client])


def test_eval_names_a_bad_policy(trained):
    with pytest.raises(ConfigError, match="--policy: must be one of global, local"):
        evaluate.evaluate_run(trained.run_dir, policy="mine")


def test_video_renders_a_cartpole_gif_with_one_frame_per_step(trained, tmp_path):
    from PIL import Image

    paths = evaluate.record_videos(trained.run_dir, clients=[1], out=tmp_path)
    assert [p.name for p in paths] == ["video_round4_client1_global.gif"]
    # The video is the evaluation's first episode on client 1: one frame per CartPole reward.
    steps = evaluate.evaluate_run(trained.run_dir, clients=[1]).returns[0, 0]
    with Image.open(paths[0]) as gif:
        assert gif.n_frames == steps and gif.size == (300, 200)
    short = evaluate.record_videos(trained.run_dir, clients=[1], out=tmp_path, max_frames=3)
    with Image.open(short[0]) as gif:
        assert gif.n_frames == 3


def test_mp4_without_ffmpeg_names_the_video_format(trained, monkeypatch, capsys):
    from jfedrl import cli
    from jfedrl.experiments import video

    monkeypatch.setattr(video.shutil, "which", lambda name: None)
    code = cli.main(["eval", str(trained.run_dir), "--video", "--video-format", "mp4"])
    error = capsys.readouterr().err
    assert code == 2 and "--video-format mp4: ffmpeg is not on PATH" in error


def test_video_refuses_environments_it_cannot_draw():
    from jfedrl.experiments import video

    with pytest.raises(ConfigError, match="--video: brax-ant: Brax video is not supported"):
        video.renderer_for("brax-ant")
    with pytest.raises(ConfigError, match="--video: no renderer for MinAtar-Breakout"):
        video.renderer_for("MinAtar-Breakout")


def test_eval_of_a_missing_round_lists_the_saved_ones(trained, capsys):
    assert cli_main(["eval", str(trained.run_dir), "--round", "77"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "jfedrl: error: --round: no checkpoint of round 77 in " in lines[0]
    assert lines[0].endswith("these exist: 2, 4")


def test_eval_out_an_existing_file_is_one_line(trained, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("mine")
    assert cli_main(["eval", str(trained.run_dir), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"jfedrl: error: --out: {str(out)!r} is a file, not a folder; choose another --out"
    ]
    assert out.read_text() == "mine"


def test_eval_views_against_numpy():
    import jax.numpy as jnp

    from jfedrl.round.metrics import eval_views

    returns = np.array([[10.0, 30.0], [5.0, 5.0], [100.0, 0.0], [40.0, 60.0]], np.float32)
    views = {k: float(v) for k, v in eval_views(jnp.asarray(returns)).items()}
    per_client = returns.mean(axis=1)  # 20, 5, 50, 50
    assert views["eval_return"] == pytest.approx(returns.mean())
    assert views["eval_return_min_client"] == 5.0 and views["eval_return_max_client"] == 50.0
    assert views["eval_return_p10"] == pytest.approx(np.percentile(per_client, 10))
    assert views["eval_return_p10"] == pytest.approx(5.0 + 0.3 * 15.0)
    assert views["eval_return_std"] == pytest.approx(np.std(per_client))


def test_metrics_hold_the_federated_views_and_compare_reads_them(trained, tmp_path):
    from jfedrl.experiments import compare
    from jfedrl.run.outputs import read_metrics

    last = read_metrics(trained.run_dir)[-1]
    per_client = evaluate.evaluate_run(trained.run_dir).returns.mean(axis=1)
    assert last["eval_return_p10"] == pytest.approx(np.percentile(per_client, 10), rel=1e-6)
    assert last["eval_return_std"] == pytest.approx(np.std(per_client), rel=1e-5, abs=1e-5)
    assert last["eval_return_min_client"] == pytest.approx(per_client.min(), rel=1e-6)
    rows = compare.compare(
        [trained.run_dir], tmp_path / "cmp", reps=20, plots=False, metric="eval_return_p10"
    )
    assert rows[0].iqm.value == pytest.approx(last["eval_return_p10"])
    assert "IQM final eval_return_p10" in (tmp_path / "cmp" / "comparison.md").read_text()
