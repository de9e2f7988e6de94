"""Weights & Biases (offline) and MLflow (local file store) as outputs of a run (issue 20)."""

from __future__ import annotations

import json

import pytest

from jfedrl.run import runner, trackers
from jfedrl.run.trackers import scalars
from jfedrl.schema.checks import ConfigError
from tests.helpers import tiny_config, with_run_dir


def test_a_chosen_tracker_without_its_package_is_one_line_naming_the_field(monkeypatch):
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"log.wandb: the wandb package is not installed"):
        trackers.check(tiny_config(log__wandb=True))
    with pytest.raises(ConfigError, match=r"log.mlflow: the mlflow package is not installed"):
        trackers.check(tiny_config(log__mlflow="mlruns"))
    trackers.check(tiny_config())  # neither chosen: nothing is looked up


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("tracked")
    patch = pytest.MonkeyPatch()
    patch.setenv("WANDB_MODE", "offline")  # no network, no account
    patch.setenv("WANDB_DIR", str(root / "wandb"))
    patch.setenv("WANDB_SILENT", "true")
    (root / "wandb").mkdir()
    config = tiny_config(log__wandb=True, log__mlflow=str(root / "mlruns"), log__plot=True)
    try:
        result = runner.train(with_run_dir(config, root / "run"), quiet=True)
    finally:
        patch.undo()
    return root, result


def test_mlflow_gets_the_scalars_the_config_and_the_curve(tracked):
    from mlflow.tracking import MlflowClient

    root, result = tracked
    client = MlflowClient(tracking_uri=(root / "mlruns").absolute().as_uri())
    run_id = (result.run_dir / trackers.MLFLOW_ID_FILE).read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert set(run.data.metrics) == {name for r in result.records for name in scalars(r)}
    history = client.get_metric_history(run_id, "eval_return")
    evals = [(r["env_steps"], r["eval_return"]) for r in result.records if r.get("eval_return")]
    assert sorted((m.step, m.value) for m in history) == evals  # float32-exact values
    assert run.data.params["algo.ppo.learning_rate"] == "0.0025"
    assert run.data.params["federation.num_clients"] == "3"
    assert [a.path for a in client.list_artifacts(run_id)] == ["learning_curve.png"]


def _wandb_records(path):
    """The protobuf records of an offline run's .wandb file (LevelDB's log format)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunks, records = 32768, 7, [], []
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # a block's zero padding
            pos += left
            continue
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def test_wandb_offline_gets_the_scalars_the_config_and_the_curve(tracked):
    root, result = tracked
    (offline,) = (root / "wandb" / "wandb").glob("offline-run-*")
    run_id = (result.run_dir / trackers.WANDB_ID_FILE).read_text().strip()
    assert offline.name.endswith(run_id)
    records = _wandb_records(next(offline.glob("*.wandb")))
    history = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {
                (item.key or item.nested_key[0]): json.loads(item.value_json)
                for item in record.history.item
            }
            history[row["_step"]] = row
    assert sorted(history) == [r["env_steps"] for r in result.records]
    for record in result.records:
        row = history[record["env_steps"]]
        for name, value in scalars(record).items():
            assert row[name] == pytest.approx(value), name
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["federation"]["num_clients"] == 3
    assert config["algo"]["ppo"]["learning_rate"] == 0.0025
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert [(a.name, a.type) for a in artifacts] == [(f"learning_curve-{run_id}", "learning_curve")]
