"""A stand-in exe-unit for one activity: PROTOCOL-LEVEL simulation, not Golem execution.

The provider's yagna forwards the requestor's exec batches to the service-bus
prefix `/public/exeunit/<activity id>`; this process registers that prefix on
the provider daemon's unix GSB socket and answers `Exec`,
`GetExecBatchResults` and `GetRunningCommand` the way a real exe-unit does
(message shapes: golemfactory/yagna `core/model/src/activity.rs`, ya-client
`model/src/activity`). It reports state (`/local/activity/SetActivityState`)
and usage counters (`SetActivityUsage`) back to yagna.

Commands run ON THIS MACHINE, unisolated: `deploy` creates
`<activity dir>/golem/{input,output,work}`, `start` marks the activity Ready,
`run` executes the argv with every `/golem` path rewritten into the activity
dir, `transfer` copies between that dir and the files behind the `gftp://`
URLs of the harness's `gftp` stand-in. Every command carries
`GOLEMNET_ACTIVITY=<id>` in its environment so that processes it leaves
running in the background, even ones that escaped the process group, are
found and killed when the activity is destroyed.

Run as `python -m tests.golemnet.exeunit <config.json>`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote

from tests.golemnet import gsb
from tests.golemnet.procs import kill_marked

log = logging.getLogger("golemnet.exeunit")

GOLEM_PATH = re.compile(r"(?<![\w./-])/golem(?=/|\b|$)")
OUTPUT_LIMIT = 1 << 20
GFTP_PREFIX = "gftp://golemnet"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def gftp_path(url: str) -> Path:
    """The local file behind a `gftp://golemnet/<quoted path>` URL of the gftp stand-in."""
    if not url.startswith(GFTP_PREFIX + "/"):
        raise ValueError(f"unsupported transfer URL {url!r} (only the gftp stand-in's URLs)")
    return Path(unquote(url[len(GFTP_PREFIX) :]))


class CommandFailed(Exception):
    """A command's failure as the requestor sees it: a message, and its output if any."""

    def __init__(self, message: str, stdout: str | None = None, stderr: str | None = None):
        super().__init__(message)
        self.message, self.stdout, self.stderr = message, stdout, stderr


class Batch:
    def __init__(self, batch_id: str, commands: list):
        self.id = batch_id
        self.commands = commands
        self.results: list[dict] = []
        self.finished = False
        self.running: dict | None = None
        self.changed = threading.Condition()

    def add(self, result: dict) -> None:
        with self.changed:
            self.results.append(result)
            self.finished = result["isBatchFinished"]
            self.changed.notify_all()


class ExeUnit:
    def __init__(self, config: dict):
        self.config = config
        self.activity_id = config["activity_id"]
        self.root = Path(config["activity_dir"])
        self.golem = self.root / "golem"
        self.behaviour = config.get("behaviour", "ok")
        self.batches: dict[str, Batch] = {}
        self.started = time.time()
        self.cpu_sec = 0.0
        self.state = "New"
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.client = gsb.GsbClient(
            config["gsb_url"], f"exeunit-{self.activity_id[:8]}", self.serve
        )

    # -- reporting to yagna

    def set_state(self, state: str, reason: str | None = None, error: str | None = None):
        self.state = state
        value = {"state": [state, None]}
        if reason:
            value["reason"] = reason
        if error:
            value["errorMessage"] = error
        reply = self.client.call(
            "/local/activity/SetActivityState",
            {"activityId": self.activity_id, "state": value, "timeout": None},
        )
        if not (isinstance(reply, dict) and "Ok" in reply):
            log.warning("SetActivityState %s: %r", state, reply)

    def report_usage(self) -> None:
        while not self.stop.wait(1.0):
            usage = [float(time.time() - self.started), float(self.cpu_sec)]
            try:
                self.client.call(
                    "/local/activity/SetActivityUsage",
                    {
                        "activityId": self.activity_id,
                        "usage": {"currentUsage": usage, "timestamp": int(time.time())},
                        "timeout": None,
                    },
                    timeout=10,
                )
                self.write_usage(usage)
            except Exception as error:  # the daemon may be going away
                log.info("usage report failed: %s", error)
                if self.client.closed.is_set():
                    self.stop.set()

    def write_usage(self, usage) -> None:
        path = self.root / "usage.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"usage": usage, "state": self.state}))
        tmp.replace(path)

    # -- the service

    def serve(self, address: str, caller: str, message):
        method = address.rsplit("/", 1)[-1]
        if method == "Exec":
            return self.exec(message)
        if method == "GetExecBatchResults":
            return self.batch_results(message)
        if method == "GetRunningCommand":
            running = [b.running for b in self.batches.values() if b.running]
            return gsb.ok(running)
        log.warning("unsupported call %s from %s: %r", address, caller, message)
        return gsb.err({"service": f"golemnet exe-unit stand-in does not support {method}"})

    def exec(self, message) -> bytes:
        batch = Batch(message["batchId"], list(message.get("exeScript") or []))
        with self.lock:
            self.batches[batch.id] = batch
        threading.Thread(target=self.run_batch, args=(batch,), daemon=True).start()
        return gsb.ok(batch.id)

    def batch_results(self, message) -> bytes:
        batch = self.batches.get(message.get("batchId"))
        if batch is None:
            return gsb.err({"notFound": f"batch {message.get('batchId')}"})
        index = message.get("commandIndex")
        # Wait a little less than the caller's timeout so the reply makes it back in time.
        wait = max(0.0, float(message.get("timeout") or 0.0) - 1.0)
        deadline = time.monotonic() + wait
        with batch.changed:
            while not batch.finished and (index is None or len(batch.results) <= index):
                left = deadline - time.monotonic()
                if left <= 0 or self.stop.is_set():
                    break
                batch.changed.wait(min(left, 0.5))
            results = list(batch.results)
        return gsb.ok(results)

    # -- commands

    def run_batch(self, batch: Batch) -> None:
        for index, command in enumerate(batch.commands):
            ((name, args),) = command.items() if isinstance(command, dict) else ((command, {}),)
            last = index == len(batch.commands) - 1
            batch.running = {"command": command, "progress": None}
            stdout = stderr = message = None
            try:
                stdout, stderr = getattr(self, f"cmd_{name}", self.cmd_unknown)(name, args or {})
                ok = True
            except CommandFailed as error:
                ok, message, stdout, stderr = False, error.message, error.stdout, error.stderr
            except Exception as error:
                ok, message = False, f"{type(error).__name__}: {error}"
            batch.running = None
            batch.add(
                {
                    "index": index,
                    "eventDate": now_iso(),
                    "result": "Ok" if ok else "Error",
                    "stdout": stdout,
                    "stderr": stderr,
                    "message": message,
                    "isBatchFinished": last or not ok,
                }
            )
            self.record({"command": name, "args": args, "ok": ok, "message": message})
            if not ok:
                return

    def record(self, entry: dict) -> None:
        entry = dict(entry, activity=self.activity_id, time=time.time())
        with open(self.root / "commands.jsonl", "a") as out:
            out.write(json.dumps(entry, default=str) + "\n")

    def cmd_unknown(self, name, args):
        raise CommandFailed(f"unsupported command {name!r}")

    def cmd_sign(self, name, args):
        return None, None

    def cmd_deploy(self, name, args):
        for sub in ("input", "output", "work"):
            (self.golem / sub).mkdir(parents=True, exist_ok=True)
        self.set_state("Deployed")
        return None, None

    def cmd_start(self, name, args):
        self.set_state("Ready")
        return None, None

    def cmd_terminate(self, name, args):
        return None, None

    def local(self, text: str) -> str:
        return GOLEM_PATH.sub(str(self.golem), text)

    def container_path(self, url: str) -> Path:
        path = url[len("container:") :] if url.startswith("container:") else url
        if not path.startswith("/golem/") and path != "/golem":
            raise CommandFailed(f"transfer outside /golem is not supported here: {url}")
        return Path(self.local(path))

    def cmd_transfer(self, name, args):
        source, target = args.get("from"), args.get("to")
        if not source or not target:
            raise CommandFailed(f"transfer needs from and to: {args}")
        if source.startswith("container:") or source.startswith("/"):
            data = self.container_path(source).read_bytes()
            data = self.tamper(data)
        else:
            data = gftp_path(source).read_bytes()
        if target.startswith("container:") or target.startswith("/"):
            path = self.container_path(target)
        else:
            path = gftp_path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return None, None

    def tamper(self, data: bytes) -> bytes:
        """What a faulty provider does to every file the requestor downloads."""
        if self.behaviour == "corrupt" and data:
            middle = len(data) // 2
            return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        if self.behaviour == "truncate":
            return data[: len(data) // 2]
        return data

    def cmd_run(self, name, args):
        argv = [args.get("entry_point") or args.get("entryPoint")] + list(args.get("args") or [])
        requested = [str(arg) for arg in argv]
        argv = [self.local(arg) for arg in requested]
        self.record({"command": "run-argv", "argv": requested, "local_argv": argv})
        if self.behaviour == "die":
            self.die()
        if self.behaviour == "fail":
            raise CommandFailed(
                "ExeScript command exited with code 1",
                None,
                "golemnet: this provider fails every command (behaviour 'fail')\n",
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("YAGNA_", "GSB_"))}
        env["GOLEMNET_ACTIVITY"] = self.activity_id
        env["GOLEMNET_PROVIDER"] = self.config.get("provider_tag", "")
        env.update(self.config.get("env") or {})
        out_path, err_path = self.root / "run.stdout", self.root / "run.stderr"
        start_cpu = os.times()
        # Output goes to files, not pipes: a background child keeping a pipe open
        # must not hold the command's result back.
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen(
                argv,
                cwd=self.golem / "work" if (self.golem / "work").is_dir() else self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
            code = process.wait()
        end_cpu = os.times()
        self.cpu_sec += (end_cpu.children_user - start_cpu.children_user) + (
            end_cpu.children_system - start_cpu.children_system
        )
        stdout = out_path.read_bytes()[-OUTPUT_LIMIT:].decode(errors="replace")
        stderr = err_path.read_bytes()[-OUTPUT_LIMIT:].decode(errors="replace")
        if code != 0:
            raise CommandFailed(f"ExeScript command exited with code {code}", stdout, stderr)
        return stdout, stderr

    # -- life and death

    def die(self) -> None:
        """Behaviour 'die': the whole provider goes away mid-task (daemon, agent, exe-units).

        It waits a second first, so that the reply to `Exec` reaches the
        requestor: the provider dies while the command runs, not while the
        batch is being handed over.
        """
        time.sleep(1.0)
        (Path(self.config["provider_dir"]) / "died").write_text(now_iso())
        for pid in self.config.get("kill_pids", []):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        kill_marked("GOLEMNET_PROVIDER", self.config.get("provider_tag", ""))
        os.killpg(os.getpgid(0), signal.SIGKILL)

    def terminate(self, reason: str) -> None:
        self.stop.set()
        kill_marked("GOLEMNET_ACTIVITY", self.activity_id)
        try:
            self.set_state("Terminated", reason=reason)
        except Exception as error:
            log.info("could not report Terminated: %s", error)

    def main(self) -> int:
        self.client.register(f"/public/exeunit/{self.activity_id}")
        self.set_state("Initialized")
        threading.Thread(target=self.report_usage, daemon=True).start()
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        parent = os.getppid()
        while not self.stop.wait(0.5):
            # The daemon went away, or the agent's process (the test) died.
            if self.client.closed.is_set() or os.getppid() != parent:
                break
        self.terminate("destroyed")
        self.client.close()
        return 0


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[0]).read_text())
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return ExeUnit(config).main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
