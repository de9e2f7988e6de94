"""The `golem` executor's pieces: the provider side, the demand, a real yagna.

- The provider side (`offload.golem.remote_command`, the long-lived
  `--serve-dir` worker, sticky state) runs here under /bin/sh with `/golem/`
  mapped to a folder: no yagna involved.
- The executor against a real `yagna` 0.17 from golem-node, started offline
  on loopback with no provider: it authenticates with a real app key,
  publishes its demand, finds no provider and fails the round with a clear
  error, after which the run resumes with the local executor.

The whole protocol with providers is in tests/test_golem_protocol.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import jax
import numpy as np
import pytest

from jfedrl import cli
from jfedrl.round.simulator import make_simulator
from jfedrl.run.checkpoint import Checkpointer
from jfedrl.run.outputs import read_metrics
from jfedrl.run.runner import CHECKPOINT_DIR, resume_config, train
from offload import OffloadError, OffloadRunner, Outcome, archive, golem
from offload.golem_config import GolemConfig
from offload.task import TASK_FILE
from tests.helpers import tiny_config, with_run_dir

IMAGE = {
    "offload.golem.image_hash": "0" * 56,
    "offload.golem.image_url": "http://127.0.0.1:9/jfedrl.gvmi",
}


def config_for(run_dir, **overrides):
    values = dict(
        federation__num_clients=4,
        federation__rounds=2,
        algo__ppo__num_steps=32,
        log__rounds_per_block=1,
    )
    values.update(overrides)
    return with_run_dir(tiny_config(**values), run_dir)


# ---------------------------------------------------------------- the provider side, here


class ShellProvider:
    """Runs each job as a provider would: the golem task command in a `/golem` tree.

    Not Golem: `offload.golem.remote_command` runs under /bin/sh on this
    machine with `/golem/` mapped to a folder, which exercises the provider
    side (the long-lived worker, its request files, sticky state) without yagna.
    """

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.outcomes = []
        self.answers = []

    def submit(self, job):
        (self.root / "input").mkdir(parents=True, exist_ok=True)
        (self.root / "input" / "task.tar").write_bytes(archive.pack(job.task_dir))
        name = f"{job.shard:03d}-{job.attempt:02d}-{len(self.answers)}"
        command = golem.remote_command(f"{sys.executable} -m offload.worker", name)
        done = subprocess.run(
            ["/bin/sh", "-c", command.replace("/golem/", f"{self.root}/")],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        answer = golem.parse_answer(done.stdout)
        self.answers.append(answer)
        ok = done.returncode == 0 and answer["ok"]
        if ok:
            result = (self.root / "output" / "result.tar").read_bytes()
            archive.unpack(result, job.output_dir, job.max_result_bytes)
        self.outcomes.append(Outcome(job, ok, answer.get("error", done.stderr[-500:])))

    def wait(self, timeout):
        done, self.outcomes = self.outcomes, []
        return done

    def verdict(self, outcome, error):
        pass

    def close(self):
        pid = int((self.root / "work" / "worker" / "pid").read_text())
        os.kill(pid, signal.SIGTERM)


def test_provider_keeps_one_worker_and_the_clients_state_between_rounds(tmp_path):
    """Three rounds through the provider-side command equal the in-process run.

    One worker process serves every task (started by the first, found alive by
    the next), compiles once, and keeps the clients' states: rounds 2 and 3
    carry none, round 3 brings them home (`state_sync_rounds: 3`).
    """
    config = config_for(tmp_path / "run", federation__rounds=3, offload__state_sync_rounds=3)
    simulator = make_simulator(config)
    state = simulator.init(jax.random.PRNGKey(config.seed))
    expected, _ = simulator.run_block(jax.tree.map(lambda x: x.copy(), state), 3)

    env = {k: v for k, v in os.environ.items() if k != "JFEDRL_COMPILATION_CACHE"}
    provider = ShellProvider(tmp_path / "golem", env)
    runner = OffloadRunner(simulator, tmp_path / "run", lambda sim, work, n: provider)
    try:
        new_state, metrics = runner.run_block(state, 3)
        pid = (tmp_path / "golem" / "work" / "worker" / "pid").read_text()
    finally:
        runner.close()
    for got, want in zip(jax.tree.leaves(new_state), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert metrics["offload/state_synced"].tolist() == [0, 0, 1]
    sent = metrics["offload/bytes_sent"].tolist()
    assert sent[1] < sent[0] and sent[2] < sent[0]  # no client states travel up after round 1
    received = metrics["offload/bytes_received"].tolist()
    assert received[0] < received[2] and received[1] < received[2]  # they come home in round 3
    assert [a["ok"] for a in provider.answers] == [True, True, True]
    assert all(len(a["archive_sha256"]) == 64 for a in provider.answers)  # checked on download
    compiled = [a["timings"]["compiled_fresh"] for a in provider.answers]
    assert compiled == [True, False, False]  # one process: it compiled once
    log = (tmp_path / "golem" / "work" / "worker" / "worker.log").read_text()
    assert pid.strip() and "Traceback" not in log
    rounds = tmp_path / "run" / "offload" / "round-000002" / "shard-000"
    task = json.loads((rounds / "train-cache" / TASK_FILE).read_text())
    assert task["state"] == "cache" and task["return_state"] is True
    assert (tmp_path / "golem" / "work" / "xla-cache").is_dir()  # the provider's own cache


@pytest.mark.parametrize("gpu", [False, True])
def test_demand_asks_for_the_image_resources_and_gpu_runtime(gpu):
    golem.import_yapapi()
    from yapapi.props.builder import DemandBuilder

    config = GolemConfig(
        gpu=gpu, image_hash="ab" * 28, image_url="http://host/jfedrl.gvmi", min_mem_gib=8.0
    )
    package_url = asyncio.run(golem.resolve_image(config))
    assert package_url == f"hash:sha3:{'ab' * 28}:http://host/jfedrl.gvmi"
    demand = DemandBuilder()
    asyncio.run(golem.make_payload(config, package_url).decorate_demand(demand))
    runtime = "(golem.runtime.name=vm-nvidia)(golem.runtime.capabilities=!exp:gpu)"
    assert demand.constraints == (
        "(&(golem.inf.mem.gib>=8.0)(golem.inf.storage.gib>=4.0)(golem.inf.cpu.threads>=2)"
        + (runtime if gpu else "(golem.runtime.name=vm)")
        + ")"
    )
    assert demand.properties["golem.srv.comp.task_package"] == package_url
    assert demand.properties["golem.srv.comp.vm.package_format"] == "gvmkit-squash"


def test_unreachable_yagna_fails_the_run_at_once(tmp_path, monkeypatch, capsys):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("YAGNA_API_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("YAGNA_APPKEY", "some-key")
    argv = ["train", "--run-dir", str(tmp_path / "run"), "--executor", "golem", "--quiet"]
    argv += ["--clients", "2", "--rounds", "1", "--no-progress", "--log.tensorboard", "false"]
    argv += ["--log.plot", "false", "--ppo.num-steps", "16", "--ppo.num-envs", "2"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in IMAGE.items()]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"jfedrl: error: golem: yagna is not reachable at http://127.0.0.1:{port}"
    )
    assert "Traceback" not in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- a real yagna


def _free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def find_yagna() -> str:
    found = shutil.which("yagna") or str(Path(sys.executable).with_name("yagna"))
    if not Path(found).is_file():
        pytest.fail(
            "the golem tests need the `yagna` daemon from golem-node, which is not installed "
            "(pip install 'jfedrl[golem]'); they are not skipped on purpose"
        )
    return found


@pytest.fixture(scope="module")
def yagna():
    """A yagna daemon offline on loopback (settings: shared GOLEM_NOTES.md)."""
    binary = find_yagna()
    home = Path(tempfile.mkdtemp(prefix="yagna-"))  # short: the GSB socket path is limited
    url = f"http://127.0.0.1:{_free_port()}"
    key = secrets.token_hex(16)
    env = dict(
        os.environ,
        YA_NET_TYPE="hybrid",
        YA_NET_RELAY_HOST=f"127.0.0.1:{_free_port()}",  # nothing listens: no relay, offline
        YA_NET_BIND_URL=f"udp://127.0.0.1:{_free_port(socket.SOCK_DGRAM)}",
        YAGNA_DATADIR=str(home / "data"),
        GSB_URL=f"unix:{home}/gsb.sock",
        YAGNA_API_URL=url,
        YAGNA_AUTOCONF_APPKEY=key,
        YAGNA_DEV_SKIP_ALLOCATION_VALIDATION="1",
        RUST_LOG="warn",
    )
    log = open(home / "yagna.log", "wb")
    process = subprocess.Popen(
        [binary, "service", "run", "--disable-metrics-push"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"yagna exited with {process.returncode}: {_tail(home / 'yagna.log')}")
            try:
                request = urllib.request.Request(
                    url + "/me", headers={"Authorization": f"Bearer {key}"}
                )
                with urllib.request.urlopen(request, timeout=2) as response:
                    json.loads(response.read())
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"yagna did not come up at {url}: {_tail(home / 'yagna.log')}")
                time.sleep(0.5)
        yield {"url": url, "key": key}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-800:] if path.exists() else ""


@pytest.fixture
def gftp_standin(tmp_path, monkeypatch):
    """A test double for the `gftp` binary, which no reachable registry provides.

    yapapi starts `gftp server` when the engine starts; with no provider, no
    file is ever published, so the double only answers `version` and
    `shutdown` (anything else is an error).
    """
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "gftp"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "for line in sys.stdin:\n"
        "    msg = json.loads(line)\n"
        "    method = msg.get('method')\n"
        "    reply = {'jsonrpc': '2.0', 'id': msg.get('id')}\n"
        "    if method == 'version':\n"
        "        reply['result'] = '0.7.3 (test double)'\n"
        "    elif method == 'shutdown':\n"
        "        reply['result'] = None\n"
        "    else:\n"
        "        reply['error'] = {'code': -32601, 'message': 'not in the test double'}\n"
        "    print(json.dumps(reply), flush=True)\n"
        "    if method == 'shutdown':\n"
        "        break\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.golem
def test_wrong_app_key_is_rejected(yagna, tmp_path, monkeypatch):
    monkeypatch.setenv("YAGNA_API_URL", yagna["url"])
    monkeypatch.setenv("YAGNA_APPKEY", "not-" + yagna["key"])
    with pytest.raises(OffloadError, match=f"yagna at {yagna['url']} rejected the app key"):
        golem.GolemExecutor(GolemConfig(image_hash="0" * 56), tmp_path)


@pytest.mark.golem
def test_no_provider_fails_the_round_and_the_run_resumes_locally(
    yagna, gftp_standin, tmp_path, monkeypatch
):
    monkeypatch.setenv("YAGNA_API_URL", yagna["url"])
    monkeypatch.setenv("YAGNA_APPKEY", yagna["key"])
    run_dir = tmp_path / "run"
    local = {"offload.executor": "local", "offload.shards": 1}
    config = config_for(run_dir, offload__executor="local", offload__shards=1)
    train(config, quiet=True, stop_after_round=1)  # round 1, checkpointed

    overrides = {"offload.executor": "golem", "offload.golem.offer_timeout": 5, **IMAGE}
    start = time.monotonic()
    with pytest.raises(OffloadError) as failure:
        train(resume_config(run_dir, overrides), resume=True, quiet=True)
    message = str(failure.value)
    assert "no provider took a task within offload.golem.offer_timeout=5s" in message
    assert f"yagna {yagna['url']}" in message and "1 demand(s) published" in message
    assert time.monotonic() - start < 120  # the offer timeout, not a hang

    # The run folder is intact: the round-1 checkpoint and metrics, and no app key anywhere.
    checkpointer = Checkpointer(run_dir / CHECKPOINT_DIR)
    assert checkpointer.rounds() == [1]
    checkpointer.close()
    assert [r["round"] for r in read_metrics(run_dir)] == [1]
    log = (run_dir / "train.log").read_text()
    assert "golem: demand published on the market" in log and "no provider took a task" in log
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert yagna["key"].encode() not in path.read_bytes(), path

    resumed = train(resume_config(run_dir, local), resume=True, quiet=True)
    assert [r["round"] for r in resumed.records] == [1, 2]
    assert resumed.records[-1]["offload/clients_lost"] == 0


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--golem.spare-wait", "-1"], "offload.golem.spare_wait"),
        (["--golem.verify-fraction", "1.5"], "offload.golem.verify_fraction"),
        (["--golem.verify-fraction", "0.5"], "offload.golem.verify_fraction"),  # sticky states
        (["--golem.verify-tolerance", "-1"], "offload.golem.verify_tolerance"),
    ],
)
def test_bad_spare_and_verify_settings_fail_in_one_line(
    flags, field, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    code = cli.main(
        ["train", "--no-progress", "--executor", "golem", "--golem.image-hash", "ab", *flags]
    )
    error = capsys.readouterr().err
    assert code == 2 and error.startswith(f"jfedrl: error: {field}:"), error
    assert len(error.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_results_agree_bit_exact_or_within_the_tolerance():
    from offload.dispatch import agree

    a = {"params/w": np.array([1.0, -2.0, np.nan], np.float32), "n": np.array([3])}
    assert agree(a, {k: v.copy() for k, v in a.items()})
    nudged = dict(a, **{"params/w": (a["params/w"] * (1 + 1e-3)).astype(np.float32)})
    assert not agree(a, nudged)
    assert agree(a, nudged, tolerance=2e-3) and not agree(a, nudged, tolerance=1e-4)
    assert not agree(a, dict(a, n=np.array([4])), tolerance=1.0)  # integers stay exact
    assert not agree(a, {"params/w": a["params/w"]})


def test_wrong_params_fault_is_plausible():
    from offload.faults import hook_for

    params = {"w": np.linspace(-1, 1, 5, dtype=np.float32)}
    wrong = hook_for("wrong_params:attempt=*")("params", {"shard": 0, "attempt": 3}, params)
    assert wrong["w"].dtype == np.float32 and np.all(np.isfinite(wrong["w"]))
    assert not np.array_equal(wrong["w"], params["w"])
    np.testing.assert_allclose(wrong["w"], params["w"], rtol=2e-3)


def test_the_worker_refuses_a_task_of_other_source(monkeypatch):
    from offload.source import ENV_VAR, source_hash, stale_image_error, worker_source_hash

    assert worker_source_hash() == source_hash()
    assert stale_image_error(source_hash()) is None and stale_image_error("") is None
    monkeypatch.setenv(ENV_VAR, "f" * 16)  # what an image built from other source holds
    error = stale_image_error(source_hash())
    assert error.startswith(f"stale image: the worker runs jfedrl source {'f' * 16}")
    assert source_hash() in error and "offload.golem.image_hash" in error


def test_the_source_hash_covers_every_package_file(tmp_path):
    from offload.source import PACKAGES, source_hash

    for package in PACKAGES:
        (tmp_path / package / "sub").mkdir(parents=True)
        (tmp_path / package / "sub" / "m.py").write_text("x = 1\n")
    before = source_hash(tmp_path)
    (tmp_path / "envs" / "sub" / "m.py").write_text("x = 2\n")
    assert source_hash(tmp_path) != before
    (tmp_path / "envs" / "sub" / "m.py").write_text("x = 1\n")
    (tmp_path / "envs" / "notes.txt").write_text("not source")
    assert source_hash(tmp_path) == before
