"""Churn over a long run, over a PROTOCOL-LEVEL Golem network (tests/golemnet; slow).

Real yagna 0.17.6 daemons and the real executor; scripted providers whose
stand-in exe-units run the tasks on this machine. 8 shards, 30 tiny rounds, 3
providers at a time: every 4 rounds the oldest provider is killed (daemon,
agent, worker) and a new one joins. Nothing is lost, the result equals the
in-process run, and each round's time and spend are in the log.
"""

from __future__ import annotations

import statistics
import threading

import pytest

from jfedrl.run.outputs import read_metrics
from jfedrl.run.runner import train
from tests.golemnet import GolemNetwork, ProviderSpec
from tests.test_golem_protocol import assert_bit_identical, assert_no_key, golem_config, inprocess

pytestmark = [pytest.mark.golem, pytest.mark.slow, pytest.mark.timeout(1500)]

ROUNDS, EVERY = 30, 4


def test_churn_kill_one_provider_every_few_rounds_and_new_ones_join(tmp_path, monkeypatch):
    specs = [ProviderSpec(f"p{i}", subnet="churn", debit_note_interval=1.0) for i in range(3)]
    with GolemNetwork(tmp_path / "net", providers=specs, subnet="churn") as net:
        for key, value in net.requestor_env.items():
            monkeypatch.setenv(key, value)
        run_dir = tmp_path / "run"
        config = golem_config(
            run_dir,
            "churn",
            shards=8,
            rounds=ROUNDS,
            **{
                "federation.num_clients": 16,
                "offload.state_sync_rounds": 0,  # a retry elsewhere carries the states
                "offload.golem.spare_wait": 3,
                "offload.golem.health_interval": 2,
                "offload.golem.max_workers": 8,
            },
        )
        killed_at: dict[int, str] = {}
        stop = threading.Event()

        def churn() -> None:
            joined = 0
            while not stop.wait(0.5):
                try:
                    done = len(read_metrics(run_dir))
                except Exception:
                    continue
                if done and done % EVERY == 0 and done not in killed_at and done < ROUNDS - 1:
                    alive = [p for p in net.providers if p.alive]
                    victim = alive[0]
                    killed_at[done] = victim.name
                    victim.kill()
                    joined += 1
                    net.add_provider(
                        ProviderSpec(f"new{joined}", subnet="churn", debit_note_interval=1.0)
                    )

        watcher = threading.Thread(target=churn, daemon=True)
        watcher.start()
        try:
            result = train(config, quiet=True)
        finally:
            stop.set()
            watcher.join(timeout=60)

        assert_bit_identical(result.state, inprocess(config))
        records = result.records
        assert len(records) == ROUNDS
        assert all(r["offload/tasks_failed"] == 0 for r in records)
        assert all(r["offload/clients_lost"] == 0 for r in records)
        assert len(killed_at) >= 5, killed_at
        spent = [float(r["golem/spent"]) for r in records]
        assert spent == sorted(spent) and spent[-1] > 0
        log = (run_dir / "train.log").read_text()
        assert log.count("GLM spent so far") == ROUNDS
        assert_no_key(net, run_dir)
        # The round after each kill (the kill lands while it runs or just before it).
        hit = {k for k in killed_at} | {k + 1 for k in killed_at}
        waits = [float(r["offload/seconds_wait"]) for r in records]
        calm = [w for i, w in enumerate(waits[1:], start=1) if i not in hit]
        lossy = [w for i, w in enumerate(waits) if i in hit and i > 0]
        print(
            f"churn: {ROUNDS} rounds, {len(killed_at)} providers killed at rounds "
            f"{sorted(killed_at)}; median round wait {statistics.median(calm):.1f} s without a "
            f"kill, {statistics.median(lossy):.1f} s (max {max(lossy):.1f}) around one; "
            f"retries per round {[int(r['offload/retries']) for r in records]}; "
            f"spent {spent[-1]:.4f} GLM; excluded {int(records[-1]['golem/providers_excluded'])}"
        )
