"""TensorBoard events and the progress bar: what a run shows outside metrics.jsonl."""

import contextlib
import io
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from jfedrl.run import runner
from tests.helpers import Terminal, tiny_config, with_run_dir

ROOT = Path(__file__).resolve().parent.parent


def read_events(path):
    """Every Event of a TFRecord file: [length u64][crc u32][Event proto][crc u32]."""
    events, data = [], path.read_bytes()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        body = data[offset + 12 : offset + 12 + length]
        events.append(event_pb2.Event.FromString(body))
        offset += 12 + length + 4
    return events


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("outputs")
    config = tiny_config(log__tensorboard=True, log__progress=True)
    stderr = Terminal()
    with contextlib.redirect_stderr(stderr):
        result = runner.train(with_run_dir(config, run_dir), quiet=True)
    return result, run_dir, stderr.getvalue()


def test_tensorboard_has_every_numeric_metric_at_its_env_step(run):
    result, run_dir, _ = run
    files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars = {}
    for event in read_events(files[0]):
        for value in event.summary.value:
            scalars[(value.tag, event.step)] = value.simple_value
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = {
        (name, record["env_steps"]): value
        for record in records
        for name, value in record.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    assert ("eval_return", records[-1]["env_steps"]) in expected  # evaluations included
    assert set(scalars) == set(expected)
    for key, value in expected.items():
        assert scalars[key] == np.float32(value), key  # stored as float32, exactly


def test_progress_bar_counts_rounds_and_shows_returns(run):
    result, _, stderr = run
    # tqdm redraws with carriage returns; the last frame is the finished bar.
    frames = [f for f in re.split(r"[\r\n]", stderr) if "round" in f]
    assert frames, stderr
    last = frames[-1]
    assert "4/4" in last and "100%" in last, last
    final_eval = result.records[-1]["eval_return"]
    assert f"eval={final_eval:.1f}" in last, last
    assert "ret=" in last and "steps_s=" in last, last
    # One update per block of 2 rounds: the bar passed through 2/4.
    assert any("2/4" in f for f in frames), frames


def test_no_progress_bar_when_disabled(tmp_path):
    stderr = io.StringIO()
    config = with_run_dir(tiny_config(federation__rounds=2), tmp_path / "quiet")
    with contextlib.redirect_stderr(stderr):
        runner.train(config, quiet=True)
    assert stderr.getvalue() == ""


def test_no_bar_frames_when_stderr_is_a_file_one_line_per_block(tmp_path):
    """nohup, SLURM: stderr is a file, which the bar's carriage-return frames would fill."""
    stderr = io.StringIO()  # not a terminal
    config = with_run_dir(tiny_config(log__progress=True), tmp_path / "file")
    with contextlib.redirect_stderr(stderr):
        runner.train(config)
    text = stderr.getvalue()
    assert "\r" not in text and "%|" not in text, text
    assert len(re.findall(r"INFO round \d/4 ", text)) == 2, text  # one line per block


def test_a_sweep_draws_no_bar_frames_into_a_file(tmp_path):
    import yaml

    from jfedrl.experiments import sweep

    base = {"federation": {"num_clients": 2, "rounds": 2, "local_updates": 1}}
    base["algo"] = {"ppo": {"num_envs": 2, "num_steps": 16, "hidden_sizes": [8]}}
    base["log"] = {"rounds_per_block": 2, "tensorboard": False, "plot": False}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "bar", "base": base, "seeds": [0]}))
    stderr = io.StringIO()  # not a terminal
    with contextlib.redirect_stderr(stderr):
        sweep.run_sweep(path, tmp_path / "out", progress=True, quiet=True)
    assert "\r" not in stderr.getvalue() and "%|" not in stderr.getvalue()


def _drive_progress(stream, blocks):
    """ShowProgress over fake blocks of 2 rounds, logging to `stream` as `train` does."""
    import logging
    from types import SimpleNamespace

    from jfedrl.run.callbacks import Block, ShowProgress
    from jfedrl.run.outputs import setup_logging

    with contextlib.redirect_stderr(stream):
        setup_logging(Path(stream.run_dir), quiet=False)  # its console handler: sys.stderr
        config = tiny_config(federation__rounds=2 * blocks)
        run = SimpleNamespace(config=config)
        progress = ShowProgress(True)
        progress.on_start(run, SimpleNamespace(round=0))
        seen = []
        for i in range(blocks):
            record = {
                "round": 2 * i + 2,
                "env_steps": 64 * (i + 1),
                "steps_per_second": 1000.0,
                "train_return_mean": 10.0,
                "eval_return": 9.0,
            }
            state = SimpleNamespace(round=2 * i + 2)
            progress.on_block(run, Block(state, [record, record], 1.0 if i == 0 else 0.0, False))
            seen.append((progress.bar.initial, progress.bar.n))
        progress.on_end(run)
        for handler in logging.getLogger("jfedrl").handlers:
            handler.close()
    return stream.getvalue(), seen


def test_log_lines_print_above_the_bar_and_its_rate_starts_after_the_compile(tmp_path):
    stream = Terminal()
    stream.run_dir = tmp_path
    text, seen = _drive_progress(stream, 3)
    logged = [line for line in text.split("\n") if " INFO round " in line]
    assert len(logged) == 3, text
    for line in logged:  # what is left of the line after the last carriage return
        assert re.match(r"\d\d:\d\d:\d\d INFO round", line.rsplit("\r", 1)[-1]), repr(line)
    # After the first block (the compile) the bar's origin moves there: its rate and
    # ETA count only the later blocks.
    assert seen == [(2, 2), (2, 4), (2, 6)]


def test_tensorboard_writer_does_not_import_an_installed_torch(tmp_path):
    # A stand-in `torch` package that records its import: tensorboardX would import it.
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import os\nopen(os.environ['MARK'], 'w').close()\n")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from jfedrl.run.outputs import MetricsWriter\n"
        "writer = MetricsWriter(Path(sys.argv[1]), tensorboard=True)\n"
        "writer.write([{'round': 1, 'env_steps': 8, 'x': 0.5}])\n"
        "assert 'torch' not in sys.modules, sys.modules.get('torch')\n"
        "import torch  # still importable afterwards\n"
    )
    mark = tmp_path / "torch-imported"
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{ROOT}", MARK=str(mark))
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, check=True)
    assert mark.exists()  # by the explicit import at the end, not by the writer
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
