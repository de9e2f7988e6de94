"""Self-test of the golemnet harness: plain yapapi against a PROTOCOL-LEVEL network.

Real yagna daemons and real yapapi 0.13.1 on the requestor side; scripted
providers whose stand-in exe-units run the commands on this machine (see
tests/golemnet). No jfedrl code is involved: this checks the harness itself.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from offload.golem import import_yapapi
from tests.golemnet import GolemNetwork, ProviderSpec

pytestmark = [pytest.mark.golem, pytest.mark.timeout(170)]

PACKAGE_URL = "hash:sha3:" + "0" * 56 + ":http://127.0.0.1:9/golemnet.gvmi"
BUDGET = 1.0


def payload():
    """A VM demand for a fixed package URL (like offload.golem.make_payload)."""
    import_yapapi()
    from yapapi.payload.package import Package
    from yapapi.payload.vm import VmPackageFormat, VmRequest

    class FixedPackage(Package):
        async def resolve_url(self) -> str:
            return PACKAGE_URL

        async def decorate_demand(self, demand) -> None:
            demand.ensure("(&(golem.inf.mem.gib>=0.5)(golem.runtime.name=vm))")
            demand.add(
                VmRequest(package_url=PACKAGE_URL, package_format=VmPackageFormat.GVMKIT_SQUASH)
            )

    return FixedPackage()


@pytest.fixture
def requestor_env(monkeypatch):
    def apply(net: GolemNetwork):
        for key, value in net.requestor_env.items():
            monkeypatch.setenv(key, value)

    return apply


async def execute(net: GolemNetwork, worker, tasks, timeout=90):
    yapapi = import_yapapi()
    from yapapi import Golem, Task

    results = []
    async with Golem(budget=BUDGET, subnet_tag=net.subnet) as golem:
        async for task in golem.execute_tasks(
            worker,
            [Task(data=data) for data in tasks],
            payload=payload(),
            max_workers=1,
            timeout=timedelta(seconds=timeout),
        ):
            results.append(task.result)
    assert yapapi
    return results


def test_round_trip_background_process_and_invoice(tmp_path, requestor_env):
    source = tmp_path / "x.txt"
    source.write_text("hello golem\n")
    target = tmp_path / "y.txt"
    pidfile = "/golem/work/bg.pid"

    async def worker(ctx, tasks):
        async for task in tasks:
            script = ctx.new_script(timeout=timedelta(seconds=30))
            script.upload_file(str(source), "/golem/input/x")
            script.run("/bin/sh", "-c", "tr a-z A-Z < /golem/input/x > /golem/output/y")
            script.run("/bin/sh", "-c", f"nohup sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}")
            script.download_file("/golem/output/y", str(target))
            yield script
            upper = target.read_text()
            # A second batch of the same activity: the background process still runs.
            script = ctx.new_script(timeout=timedelta(seconds=30))
            alive = script.run("/bin/sh", "-c", f"kill -0 $(cat {pidfile}) && echo alive")
            yield script
            task.accept_result((upper, (await alive).stdout))

    with GolemNetwork(tmp_path / "net", providers=[ProviderSpec("p0")], subnet="gn-self") as net:
        requestor_env(net)
        began = time.monotonic()
        results = asyncio.run(execute(net, worker, ["t0"]))
        assert results == [("HELLO GOLEM\n", "alive\n")]
        provider = net.providers[0]
        stats = net.wait_for(
            lambda: (s := provider.stats)["invoices_accepted"] >= 1 and s, timeout=30
        )
        print(f"startup {net.startup_seconds:.1f}s, run {time.monotonic() - began:.1f}s")
        assert len(stats["agreements"]) == 1 and len(stats["activities"]) == 1
        assert any("tr a-z A-Z" in " ".join(argv) for argv in stats["runs"])
        assert stats["errors"] == []
