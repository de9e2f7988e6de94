"""`GolemNetwork`: a PROTOCOL-LEVEL Golem test network on loopback.

Real yagna daemons (a router, a requestor, one per provider) and a real
yapapi requestor on the test's side; on the provider side a scripted agent
(`agent.py`) and stand-in exe-units (`exeunit.py`) that run commands on this
machine. Not execution on Golem, nothing isolated.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from tests.golemnet.agent import ProviderAgent, ProviderSpec
from tests.golemnet.daemons import Daemon
from tests.golemnet.procs import kill_marked

log = logging.getLogger("golemnet")

GFTP_DIR = Path(__file__).resolve().parent / "bin"
T = TypeVar("T")

PROVIDER_DAEMON_ENV = {
    # Offers are re-broadcast every ~5 s, so a demand published after the
    # offer still sees it within seconds (the default waits minutes).
    "MEAN_CYCLIC_BCAST_INTERVAL": "2s",
    # yagna destroys an activity whose usage counters go stale; the stand-in
    # reports every second, these only give slack on a loaded machine.
    "INACTIVITY_LIMIT_SECONDS": "600",
    "UNRESPONSIVE_LIMIT_SECONDS": "600",
}


class Provider:
    """One simulated provider: its yagna daemon and its agent."""

    def __init__(self, spec: ProviderSpec, daemon: Daemon, root: Path, tag: str):
        self.spec = spec
        self.name = spec.name
        self.daemon = daemon
        self.root = root
        self.tag = tag
        self.agent: ProviderAgent | None = None
        self._killed = threading.Event()

    @property
    def node_id(self) -> str:
        return self.daemon.node_id

    @property
    def stats(self) -> dict:
        assert self.agent is not None
        return self.agent.stats()

    @property
    def alive(self) -> bool:
        return self.daemon.alive() and not (self.root / "died").exists()

    def kill(self) -> None:
        """Kills this provider at once: daemon, agent, exe-units and their children."""
        self._killed.set()
        (self.root / "died").write_text("killed by the test\n")
        if self.agent is not None:
            self.agent.stop_event.set()
        self.daemon.kill()
        kill_marked("GOLEMNET_PROVIDER", self.tag)

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        self.daemon.stop()
        kill_marked("GOLEMNET_PROVIDER", self.tag)


class GolemNetwork:
    """A router, a requestor and N provider yagna daemons plus scripted providers.

    Use as a context manager; see `tests/golemnet/__init__.py` for the API.
    """

    def __init__(
        self,
        root,
        providers=None,
        subnet: str = "golemnet",
        ready_timeout: float = 60.0,
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.specs = list(providers if providers is not None else [ProviderSpec("p0")])
        names = [spec.name for spec in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique: {names}")
        self.subnet = subnet
        self.ready_timeout = ready_timeout
        # Short: the unix GSB socket path of each daemon lives here.
        self.home = Path(tempfile.mkdtemp(prefix="gn-", dir="/tmp"))
        self._tag = hashlib.sha1(str(self.home).encode()).hexdigest()[:12]
        self.router: Daemon | None = None
        self.requestor: Daemon | None = None
        self.providers: list[Provider] = []
        self.startup_seconds = 0.0

    # -- life cycle

    def __enter__(self) -> GolemNetwork:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _daemon(self, name: str, router: str | None, env=None) -> Daemon:
        return Daemon(
            name, self.home / name, router, extra_env=env, log_path=self.root / f"yagna-{name}.log"
        )

    def start(self) -> None:
        began = time.monotonic()
        self.router = self._daemon("router", None).start()
        self.router.wait_ready(self.ready_timeout)
        address = f"127.0.0.1:{self.router.gsb_port}"
        self.requestor = self._daemon("requestor", address).start()
        for spec in self.specs:
            tag = f"{self._tag}-{spec.name}"
            daemon = self._daemon(
                f"p-{spec.name}", address, dict(PROVIDER_DAEMON_ENV, GOLEMNET_PROVIDER=tag)
            )
            self.providers.append(Provider(spec, daemon.start(), self.root / spec.name, tag))
        daemons = [self.requestor] + [p.daemon for p in self.providers]
        with ThreadPoolExecutor(len(daemons)) as pool:
            list(pool.map(lambda d: d.wait_ready(self.ready_timeout), daemons))
        for provider in self.providers:
            provider.agent = ProviderAgent(
                provider.spec, provider.daemon, self.subnet, provider.root, provider.tag
            )
            provider.agent.start()
        self.startup_seconds = time.monotonic() - began
        log.info("golemnet up in %.1f s", self.startup_seconds)

    def add_provider(self, spec: ProviderSpec) -> Provider:
        """Starts one more provider while the network runs (a provider joining the market)."""
        if any(p.name == spec.name for p in self.providers):
            raise ValueError(f"provider names must be unique: {spec.name}")
        assert self.router is not None
        tag = f"{self._tag}-{spec.name}"
        daemon = self._daemon(
            f"p-{spec.name}",
            f"127.0.0.1:{self.router.gsb_port}",
            dict(PROVIDER_DAEMON_ENV, GOLEMNET_PROVIDER=tag),
        )
        provider = Provider(spec, daemon.start(), self.root / spec.name, tag)
        self.providers.append(provider)
        daemon.wait_ready(self.ready_timeout)
        provider.agent = ProviderAgent(spec, daemon, self.subnet, provider.root, tag)
        provider.agent.start()
        return provider

    def close(self) -> None:
        for provider in self.providers:
            try:
                provider.stop()
            except Exception:  # keep tearing the rest down
                log.exception("stopping provider %s", provider.name)
        for daemon in (self.requestor, self.router):
            if daemon is not None:
                daemon.stop()
        for provider in self.providers:
            kill_marked("GOLEMNET_PROVIDER", provider.tag)
        shutil.rmtree(self.home, ignore_errors=True)

    # -- what tests use

    @property
    def app_key(self) -> str:
        assert self.requestor is not None
        return self.requestor.key

    @property
    def requestor_env(self) -> dict[str, str]:
        """The environment a yapapi requestor needs (set it before creating `Golem`)."""
        assert self.requestor is not None
        return {
            "YAGNA_API_URL": self.requestor.url,
            "YAGNA_APPKEY": self.requestor.key,
            "YAGNA_SUBNET": self.subnet,
            "YAGNA_DEV_SKIP_ALLOCATION_VALIDATION": "1",
            "YAGNA_PAYMENT_DRIVER": "erc20",
            "YAGNA_PAYMENT_NETWORK": "holesky",
            "PATH": os.pathsep.join([str(GFTP_DIR), os.environ.get("PATH", "")]),
        }

    def provider(self, name: str) -> Provider:
        return next(p for p in self.providers if p.name == name)

    def wait_for(
        self, condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.2
    ) -> T:
        """Polls `condition` until it returns something truthy (returned) or raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            time.sleep(interval)

    def log_paths(self) -> list[Path]:
        """Every daemon, agent and exe-unit log of this network."""
        paths = sorted(self.root.glob("yagna-*.log"))
        for provider in self.providers:
            paths += sorted(provider.root.glob("agent.log"))
            paths += sorted(provider.root.glob("activity-*/exeunit.log"))
        return [path for path in paths if path.exists()]
