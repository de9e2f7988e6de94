"""The `golem` executor: its yapapi worker function, and a real yagna daemon.

No provider can run here (no provider agent, exe-unit or VM runtime is
installable), so two things are tested separately:

- `offload.golem.golem_worker`, driven by a stand-in for yapapi's WorkContext
  that executes the script's upload / run / download steps on this machine in
  a temporary `/golem`-style tree (a stand-in, not Golem);
- the executor against a real `yagna` 0.17 from golem-node, started offline on
  loopback: it authenticates with a real app key, publishes its demand, finds
  no provider and fails the round with a clear error, after which the run
  resumes with the local executor.
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

from jfedrl import __version__, cli
from jfedrl.checkpoint import Checkpointer
from jfedrl.config import GolemConfig
from jfedrl.federated import make_simulator
from jfedrl.outputs import read_metrics
from jfedrl.runner import CHECKPOINT_DIR, resume_config, train
from offload import OffloadError, OffloadRunner, golem
from offload import task as fmt
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


# ---------------------------------------------------------------- a stand-in work context


class StandInScript:
    """Records upload / run / download steps; `execute` performs them locally."""

    def __init__(self, root: Path, timeout):
        self.root = root
        self.timeout = timeout.total_seconds() if timeout else None
        self.steps = []

    def _add(self, kind, *args):
        future = asyncio.get_running_loop().create_future()
        self.steps.append((kind, args, future))
        return future

    def local(self, remote: str) -> Path:
        assert remote.startswith("/golem/"), remote
        return self.root / remote[len("/golem/") :]

    def upload_file(self, source, destination):
        return self._add("upload", source, destination)

    def run(self, *command):
        return self._add("run", *command)

    def download_bytes(self, source, on_download, limit):
        return self._add("download", source, on_download, limit)

    async def execute(self, env):
        for kind, args, future in self.steps:
            if kind == "upload":
                target = self.local(args[1])
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(args[0], target)
                future.set_result(None)
            elif kind == "run":
                command = [arg.replace("/golem/", f"{self.root}/") for arg in args]
                process = await asyncio.create_subprocess_exec(
                    *command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
                out, err = await asyncio.wait_for(process.communicate(), self.timeout)
                if process.returncode:
                    # What yapapi throws into the worker when a command fails.
                    raise RuntimeError(
                        f"command failed with code {process.returncode}: {err.decode()[-300:]}"
                    )
                future.set_result(out)
            else:
                source, on_download, limit = args
                await on_download(self.local(source).read_bytes()[:limit])
                future.set_result(None)


class StandInContext:
    """What `golem_worker` uses of yapapi's WorkContext: a provider id and scripts."""

    def __init__(self, root: Path, provider_id: str):
        self.root, self.provider_id = root, provider_id

    def new_script(self, timeout=None):
        return StandInScript(self.root, timeout)


class StandInTask:
    def __init__(self, data):
        self.data, self.result = data, None

    def accept_result(self, result=None):
        self.result = result


class StandInGolemExecutor:
    """Drives `golem_worker` as yapapi's engine does, one stand-in provider at a time.

    A provider whose worker raises (`ProviderFailed`) is replaced by a fresh
    one for the remaining tasks, like yapapi starting a worker on another
    agreement; blamed providers are recorded as the real executor does. One
    `/golem` tree stands in for every provider's VM (so the worker compiles
    once into its `/golem/work` cache).
    """

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.providers = 0
        self.blocked = set()

    async def _provider(self, pending):
        self.providers += 1
        ctx = StandInContext(self.root, f"p{self.providers}")

        async def tasks():
            for golem_job in pending:
                if not golem_job.future.done():
                    yield StandInTask(golem_job)

        worker = golem.golem_worker(
            ctx, tasks(), task_timeout=300, worker_command=f"{sys.executable} -m offload.worker"
        )
        try:
            script = await worker.__anext__()
            while True:
                try:
                    await script.execute(self.env)
                except Exception as error:  # as in yapapi's process_batches
                    script = await worker.athrow(error)
                else:
                    script = await worker.asend(None)
        except (StopAsyncIteration, golem.ProviderFailed):
            pass

    def run(self, jobs):
        golem_jobs = [golem.prepare_job(job) for job in jobs]
        while not all(g.future.done() for g in golem_jobs):
            asyncio.run(self._provider(golem_jobs))
        outcomes = [golem.finish_job(g) for g in golem_jobs]
        for outcome in outcomes:
            if not outcome.ok:
                self.blame(outcome, outcome.error)
        return outcomes

    def blame(self, outcome, reason):
        self.blocked.add(outcome.worker)

    def close(self):
        pass


def test_golem_worker_function_with_a_standin_work_context(tmp_path):
    """A round through `golem_worker`: failed providers are replaced, the result is valid."""
    image = {k.replace(".", "__"): v for k, v in IMAGE.items()}
    config = config_for(tmp_path / "run", offload__executor="golem", **image)
    simulator = make_simulator(config)
    state = simulator.init(jax.random.PRNGKey(config.seed))

    # A provider's view: its own compilation cache under /golem/work, and faults:
    # the first provider crashes, the second returns a corrupt result, the third is fine.
    env = {k: v for k, v in os.environ.items() if k != "JFEDRL_COMPILATION_CACHE"}
    env["JFEDRL_FAULT"] = "crash:attempt=0;corrupt:attempt=1"
    executor = StandInGolemExecutor(tmp_path / "golem", env)
    runner = OffloadRunner(simulator, tmp_path / "run", lambda sim, work, n: executor)
    new_state, metrics = runner.run_block(state, 1)

    assert metrics["offload/retries"].tolist() == [2]
    assert metrics["offload/tasks_failed"].tolist() == [0]
    assert metrics["clients_excluded"].tolist() == [0] and int(new_state.round) == 1
    assert executor.blocked == {"p1", "p2"}  # crashed, corrupt
    assert executor.providers == 3
    # The third provider's downloaded result is a valid result folder for its task.
    shard = tmp_path / "run" / "offload" / "round-000000" / "shard-000"
    task = json.loads((shard / "task" / fmt.TASK_FILE).read_text())
    spec = fmt.result_spec(fmt.shard_shapes(simulator, 4), "none")
    arrays, report = fmt.read_result(shard / "result-2", task, spec)
    assert report["client_ids"] == [0, 1, 2, 3] and report["round"] == 0
    assert report["versions"]["jfedrl"] == __version__
    params = fmt.decode_group("params", arrays, fmt.shard_shapes(simulator, 4).new_params, True)
    np.testing.assert_allclose(
        jax.tree.leaves(params)[0].mean(axis=0),
        np.asarray(jax.tree.leaves(new_state.global_params)[0]),
        rtol=1e-5,
        atol=1e-6,
    )  # FedAvg of equal-weight clients is their mean
    tree = tmp_path / "golem"
    assert (tree / "input" / "task.tar").is_file() and (tree / "output" / "result.tar").is_file()
    assert any((tree / "work" / "xla-cache").iterdir())  # the provider's own XLA cache


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
