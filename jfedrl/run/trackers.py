"""Weights & Biases and MLflow as optional outputs of a run (`--log.wandb`, `--log.mlflow`).

Each tracker gets what TensorBoard gets: every numeric field of every round's
record, at its `env_steps`; the run's config as the tracked run's config
(MLflow: one param per dotted field); and, when the run ends, the learning
curve as an artifact. The packages are imported only when chosen (extras
`[wandb]`, `[mlflow]`); a missing one is a one-line error naming the field
before anything is compiled. A resumed run continues the same tracked run: its
id is kept in the run folder (`wandb_run_id`, `mlflow_run_id`).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import time
from pathlib import Path
from typing import Any

from jfedrl.config import Config
from jfedrl.round.state import FedState
from jfedrl.run import distributed
from jfedrl.run.callbacks import Block, Callback, Run
from jfedrl.run.outputs import CURVE_FILE
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import flat_fields, to_dict

WANDB_ID_FILE = "wandb_run_id"
MLFLOW_ID_FILE = "mlflow_run_id"


def check(config: Config) -> None:
    """Fails naming the field when a chosen tracker's package is not installed."""
    for field, package, extra in (
        ("log.wandb", "wandb", "wandb"),
        ("log.mlflow", "mlflow", "mlflow"),
    ):
        chosen = getattr(config.log, field.split(".")[1])
        if chosen and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"{field}: the {package} package is not installed "
                f"(pip install 'jfedrl[{extra}]', or leave {field} off)"
            )


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a record, as TensorBoard gets them."""
    return {
        name: float(value)
        for name, value in record.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _saved_id(path: Path) -> str | None:
    """The tracked run's id a previous session of this run saved (None: a new one)."""
    return (path.read_text().strip() or None) if path.is_file() else None


class WandbTracker(Callback):
    """Logs the run to Weights & Biases (project `log.experiment`); process 0 only.

    A block's records are logged at the next block (or the end): the callbacks
    after this one (the privacy ledger) annotate them first. This callback comes
    before the learning curve's, so that it ends after it and uploads the curve.
    """

    def on_start(self, run: Run, state: FedState) -> None:
        self.run, self.pending = None, []
        if not distributed.is_primary():
            return
        import wandb

        id_file = run.run_dir / WANDB_ID_FILE
        run_id = _saved_id(id_file) or secrets.token_hex(4)  # W&B's 8-character ids
        self.run = wandb.init(
            project=run.config.log.experiment,
            name=run.run_dir.name,
            id=run_id,
            resume="allow",
            config=to_dict(run.config),
            dir=os.environ.get("WANDB_DIR") or str(run.run_dir),
            reinit="create_new",  # a sweep tracks each of its runs at once
        )
        id_file.write_text(run_id + "\n")

    def _flush(self) -> None:
        for record in self.pending:
            self.run.log(scalars(record), step=int(record["env_steps"]))
        self.pending = []

    def on_block(self, run: Run, block: Block) -> Block:
        if self.run is not None:
            self._flush()
            self.pending = block.records
        return block

    def on_end(self, run: Run) -> None:
        if self.run is None:
            return
        import wandb

        self._flush()
        curve = run.run_dir / CURVE_FILE
        if curve.is_file():
            artifact = wandb.Artifact(f"learning_curve-{self.run.id}", type="learning_curve")
            artifact.add_file(str(curve))
            self.run.log_artifact(artifact)
        self.run.finish()


class MlflowTracker(Callback):
    """Logs the run to MLflow (tracking folder or URI `log.mlflow`); process 0 only.

    A folder is MLflow's file store (which MLflow 3 keeps in maintenance mode and
    allows only with `MLFLOW_ALLOW_FILE_STORE=true`: set here for that folder); a
    URI (`sqlite:///...`, `http://...`) is used as it is. The experiment is
    `log.experiment`. Records are logged a block late, as `WandbTracker` does.
    """

    def on_start(self, run: Run, state: FedState) -> None:
        self.client, self.run_id, self.finished, self.pending = None, None, False, []
        if not distributed.is_primary():
            return
        target = run.config.log.mlflow
        if "://" in target or target.startswith("sqlite:"):
            uri = target
        else:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            Path(target).mkdir(parents=True, exist_ok=True)
            uri = Path(target).absolute().as_uri()
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        id_file = run.run_dir / MLFLOW_ID_FILE
        self.run_id = _saved_id(id_file)
        if self.run_id is None:
            name = run.config.log.experiment
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = (
                experiment.experiment_id if experiment else self.client.create_experiment(name)
            )
            created = self.client.create_run(experiment_id, run_name=run.run_dir.name)
            self.run_id = created.info.run_id
            flat = _flat(to_dict(run.config))
            params = [Param(path, str(value)[:500]) for path, value in flat.items()]
            for i in range(0, len(params), 100):  # MLflow's batch limit
                self.client.log_batch(self.run_id, params=params[i : i + 100])
            id_file.write_text(self.run_id + "\n")
        else:
            self.client.update_run(self.run_id, status="RUNNING")

    def _flush(self) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(name, value, now, int(record["env_steps"]))
            for record in self.pending
            for name, value in scalars(record).items()
        ]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])
        self.pending = []

    def on_block(self, run: Run, block: Block) -> Block:
        if self.client is not None:
            self._flush()
            self.pending, self.finished = block.records, block.finished
        return block

    def on_end(self, run: Run) -> None:
        if self.client is None:
            return
        self._flush()
        curve = run.run_dir / CURVE_FILE
        if curve.is_file():
            self.client.log_artifact(self.run_id, str(curve))
        self.client.set_terminated(self.run_id, "FINISHED" if self.finished else "KILLED")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config mapping as `dotted.path -> value` (the flags' names)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in _DICT_FIELDS:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


#: Config fields whose value is a mapping (kept whole as one param).
_DICT_FIELDS = {
    path
    for path, annotation, _ in flat_fields(Config)
    if annotation is dict or getattr(annotation, "__origin__", None) is dict
}


def trackers(config: Config) -> list[Callback]:
    """The tracker callbacks `config.log` chooses (empty: none)."""
    chosen: list[Callback] = []
    if config.log.wandb:
        chosen.append(WandbTracker())
    if config.log.mlflow:
        chosen.append(MlflowTracker())
    return chosen
