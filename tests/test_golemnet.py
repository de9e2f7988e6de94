"""Self-test of the golemnet harness: plain yapapi against a PROTOCOL-LEVEL network.

Real yagna daemons and real yapapi 0.13.1 on the requestor side; scripted
providers whose stand-in exe-units run the commands on this machine (see
tests/golemnet). No jfedrl code is involved: this checks the harness itself.

One network serves the module; each provider sits in its own subnet so that
each test's requestor meets exactly the provider (behaviour) it is about.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from offload.golem import import_yapapi
from tests.golemnet import GolemNetwork, ProviderSpec
from tests.golemnet.procs import marked_pids

# The harness's own tests; tests/test_golem_protocol.py exercises it in the default run.
pytestmark = [pytest.mark.golem, pytest.mark.slow, pytest.mark.timeout(240)]

PACKAGE_URL = "hash:sha3:" + "0" * 56 + ":http://127.0.0.1:9/golemnet.gvmi"
BEHAVIOURS = ("ok", "fail", "corrupt", "truncate", "die")


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


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    specs = [
        ProviderSpec(b, behaviour=b, subnet=f"gn-{b}", debit_note_interval=1.0 if b == "ok" else 0)
        for b in BEHAVIOURS
    ]
    with pytest.MonkeyPatch.context() as patch:
        with GolemNetwork(tmp_path_factory.mktemp("golemnet"), providers=specs) as network:
            for key, value in network.requestor_env.items():
                patch.setenv(key, value)
            print(f"golemnet start-up: {network.startup_seconds:.1f} s")
            yield network


def execute(subnet, worker, tasks, timeout=60.0, events=None):
    """Runs a yapapi job in `subnet`; returns the accepted results."""
    import_yapapi()
    from yapapi import Golem, Task

    async def job():
        results = []
        async with Golem(budget=1.0, subnet_tag=subnet) as golem:
            if events is not None:
                golem.add_event_consumer(lambda e: events.append((time.time(), e)))
            async for task in golem.execute_tasks(
                worker,
                [Task(data=data) for data in tasks],
                payload=payload(),
                max_workers=1,
                timeout=timedelta(seconds=timeout),
            ):
                results.append(task.result)
        return results

    return asyncio.run(job())


def test_round_trip_background_process_and_invoice(net, tmp_path):
    source, target = tmp_path / "x.txt", tmp_path / "y.txt"
    source.write_text("hello golem\n")
    pidfile = "/golem/work/bg.pid"

    async def worker(ctx, tasks):
        async for task in tasks:
            script = ctx.new_script(timeout=timedelta(seconds=30))
            script.upload_file(str(source), "/golem/input/x")
            script.run("/bin/sh", "-c", "tr a-z A-Z < /golem/input/x > /golem/output/y")
            script.run("/bin/sh", "-c", f"nohup sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}")
            # A daemon that leaves the process group and session (setsid, double fork).
            script.run("/bin/sh", "-c", f"setsid -f sh -c 'echo $$ > {pidfile}2; exec sleep 301'")
            script.download_file("/golem/output/y", str(target))
            yield script
            upper = target.read_text()
            # A second batch in the same activity: the background process still runs.
            script = ctx.new_script(timeout=timedelta(seconds=30))
            alive = script.run(
                "/bin/sh", "-c", f"kill -0 $(cat {pidfile}) $(cat {pidfile}2) && echo alive"
            )
            script.run("/bin/sleep", "2")  # long enough for a debit note
            yield script
            task.accept_result((upper, (await alive).stdout))

    began = time.monotonic()
    results = execute("gn-ok", worker, ["t0"])
    print(f"round trip: {time.monotonic() - began:.1f} s")
    assert results == [("HELLO GOLEM\n", "alive\n")]

    provider = net.provider("ok")
    # After the `Golem` context: the agreement is terminated, the invoice issued and
    # accepted (the provider's daemon learns of the acceptance a moment later).
    stats = provider.stats
    assert stats["invoices_issued"] == 1, stats
    stats = net.wait_for(lambda: (s := provider.stats)["invoices_accepted"] and s, timeout=10)
    assert stats["invoices_accepted"] == 1, stats["invoices"]
    assert float(stats["amount_accepted"]) > 0
    assert len(stats["agreements"]) == 1 and len(stats["activities"]) == 1
    assert stats["destroyed_activities"] == stats["activities"]
    (reason,) = [t["reason"] for t in stats["terminations"].values()]
    assert reason == "Successfully finished all work"
    assert ["/bin/sh", "-c", "tr a-z A-Z < /golem/input/x > /golem/output/y"] in stats["runs"]
    assert stats["errors"] == []
    assert stats["debit_notes"], stats
    net.wait_for(lambda: provider.stats["debit_notes_accepted"], timeout=10)
    # The activity is destroyed: its background process is gone.
    (activity,) = stats["activities"]
    assert net.wait_for(lambda: not marked_pids("GOLEMNET_ACTIVITY", activity), timeout=10)


def test_failing_command_reaches_yapapi(net):
    import_yapapi()
    from yapapi.rest.activity import CommandExecutionError

    async def worker(ctx, tasks):
        async for task in tasks:
            script = ctx.new_script(timeout=timedelta(seconds=30))
            script.run("/bin/sh", "-c", "echo fine")
            try:
                yield script
            except CommandExecutionError as error:
                task.accept_result(("error", error.message, error.stderr))
            else:
                task.accept_result(("ok",))

    ((outcome, message, stderr),) = execute("gn-fail", worker, ["t0"])
    assert outcome == "error"
    assert "exited with code 1" in message
    assert "behaviour 'fail'" in stderr
    assert net.provider("fail").stats["runs"]


@pytest.mark.parametrize("behaviour", ["corrupt", "truncate"])
def test_tampered_downloads(net, tmp_path, behaviour):
    data = bytes(range(256)) * 4
    source, target = tmp_path / "in.bin", tmp_path / "out.bin"
    source.write_bytes(data)

    async def worker(ctx, tasks):
        async for task in tasks:
            script = ctx.new_script(timeout=timedelta(seconds=30))
            script.upload_file(str(source), "/golem/input/in.bin")
            script.run("/bin/cp", "/golem/input/in.bin", "/golem/output/out.bin")
            script.download_file("/golem/output/out.bin", str(target))
            yield script
            task.accept_result(target.read_bytes())

    (received,) = execute(f"gn-{behaviour}", worker, ["t0"])
    if behaviour == "truncate":
        assert received == data[: len(data) // 2]
    else:
        assert len(received) == len(data)
        assert sum(a != b for a, b in zip(received, data, strict=True)) == 1


def test_dying_provider(net):
    """Behaviour 'die': the provider vanishes at its first `run`; the error reaches the worker."""
    events = []

    async def worker(ctx, tasks):
        async for task in tasks:
            script = ctx.new_script(timeout=timedelta(seconds=60))
            script.run("/bin/sh", "-c", "echo never")
            try:
                yield script
            except Exception as error:  # thrown into the worker at `yield`
                task.accept_result((time.time(), type(error).__name__, str(error)[:200]))
            else:
                task.accept_result("finished")

    provider = net.provider("die")
    began = time.monotonic()
    results = execute("gn-die", worker, ["t0"], timeout=40, events=events)
    died_at = (provider.root / "died").stat().st_mtime
    if results:
        ((failed_at, kind, message),) = results
    else:  # the error hit yapapi outside the worker: the worker failed, the task was retried
        failed_at, kind, message = next(
            (at, "WorkerFinished", str(e.exc_info[1]))
            for at, e in events
            if type(e).__name__ == "WorkerFinished" and e.exc_info
        )
    print(
        f"provider died; error in the worker {failed_at - died_at:.1f} s later: {kind} "
        f"{message.splitlines()[0]!r}; job over after {time.monotonic() - began:.1f} s"
    )
    assert not provider.alive
    assert provider.stats["died"]
    assert not marked_pids("GOLEMNET_PROVIDER", provider.tag)
    assert 0 < failed_at - died_at < 30
    executed = [str(e.command) for _, e in events if type(e).__name__ == "CommandExecuted"]
    assert not [command for command in executed if command.startswith("Run")], executed


def test_kill_provider_from_the_test(net):
    provider = net.provider("fail")
    assert provider.alive
    provider.kill()
    assert not provider.alive
    assert not marked_pids("GOLEMNET_PROVIDER", provider.tag)
    assert all(path.exists() for path in net.log_paths())
