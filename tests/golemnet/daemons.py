"""Real `yagna` daemons on loopback for the PROTOCOL-LEVEL Golem test network.

Each daemon is the unmodified `yagna` 0.17 binary from the golem-node wheel,
started offline with its own data dir, REST port, app key, UDP bind port and
unix-socket service bus (GSB). One daemon, the *router*, also serves its own
service bus on TCP; the requestor and provider daemons join a `central` net
through it (settings measured in the shared GOLEM_NOTES.md). Every daemon runs
in its own process group so it can be killed with everything it started.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

READY_TIMEOUT = 60.0


def find_yagna() -> str:
    """The `yagna` binary of golem-node: next to this Python, or on PATH."""
    beside = Path(sys.executable).with_name("yagna")
    found = str(beside) if beside.is_file() else shutil.which("yagna")
    if not found:
        raise RuntimeError(
            "the golemnet harness needs the `yagna` daemon from golem-node "
            "(pip install 'jfedrl[golem]')"
        )
    return found


def free_port(kind: int = socket.SOCK_STREAM, four_digits: bool = False) -> int:
    """A free loopback port; `four_digits` for CENTRAL_NET_HOST, which rejects longer ones."""
    for _ in range(200):
        port = random.randint(2000, 9999) if four_digits else 0
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free loopback port")


def kill_group(process: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM the process group of `process`, then SIGKILL what is left."""
    if process is None:
        return
    try:
        pgid = os.getpgid(process.pid)
    except ProcessLookupError:
        pgid = process.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; members of the group may still be alive.
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            break
    try:
        process.wait(timeout=1)
    except subprocess.TimeoutExpired:
        pass


class Daemon:
    """One `yagna service run` process.

    Args:
        name: a label for logs.
        home: a short directory (the unix GSB socket path is limited to ~100 bytes).
        router: for the router daemon, None; otherwise "127.0.0.1:PORT" of the router.
        extra_env: more environment variables (e.g. provider timing settings).
    """

    def __init__(self, name: str, home: Path, router: str | None, extra_env=None, log_path=None):
        self.name = name
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.key = os.urandom(16).hex()
        self.log_path = Path(log_path) if log_path else self.home / "yagna.log"
        self.process: subprocess.Popen | None = None
        self.node_id = ""
        if router is None:
            self.gsb_port = free_port(four_digits=True)
            gsb_url = f"tcp://127.0.0.1:{self.gsb_port}"
            net = dict(YA_NET_TYPE="hybrid", YA_NET_RELAY_HOST=f"127.0.0.1:{free_port()}")
        else:
            gsb_url = f"unix:{self.home}/gsb.sock"
            net = dict(YA_NET_TYPE="central", CENTRAL_NET_HOST=router)
        self.gsb_url = gsb_url
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("YAGNA_", "YA_", "GSB_", "CENTRAL_NET"))
        }
        self.env.update(
            net,
            YA_NET_BIND_URL=f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
            YAGNA_DATADIR=str(self.home / "data"),
            GSB_URL=gsb_url,
            YAGNA_API_URL=self.url,
            YAGNA_AUTOCONF_APPKEY=self.key,
            YAGNA_DEV_SKIP_ALLOCATION_VALIDATION="1",
            RUST_LOG=os.environ.get("GOLEMNET_RUST_LOG", "info"),
            **(extra_env or {}),
        )

    @property
    def gsb_socket(self) -> Path:
        return self.home / "gsb.sock"

    def start(self) -> Daemon:
        command = [find_yagna(), "service", "run", "--disable-metrics-push"]
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            # If the test process dies hard, its daemons go with it (the parent
            # death signal fires when the forking thread ends: main thread only).
            command = [setpriv, "--pdeathsig", "TERM", "--", *command]
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    def request(self, method: str, path: str, body=None, timeout: float = 10.0):
        """One REST call with this node's app key; returns parsed JSON (or None)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> str:
        """Waits for `GET /me` (and, off the router, the GSB socket); returns the node id."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"yagna {self.name} exited with {self.process.returncode}: {self.tail()}"
                )
            try:
                me = self.request("GET", "/me", timeout=2)
                self.node_id = str(me["identity"])
                if self.gsb_url.startswith("unix:") and not self.gsb_socket.exists():
                    raise OSError("no GSB socket yet")
                return self.node_id
            except (OSError, ValueError, KeyError, TypeError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"yagna {self.name} did not come up at {self.url}: {self.tail()}"
                    ) from None
                time.sleep(0.2)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        kill_group(self.process, grace)

    def kill(self) -> None:
        kill_group(self.process, grace=0.0)

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
