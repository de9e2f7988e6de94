"""The `golem` executor end to end over a PROTOCOL-LEVEL Golem network.

Real yagna 0.17.6 daemons (a router, the requestor, the providers) and the
real executor (yapapi 0.13.1); scripted provider agents and stand-in
exe-units that run the task commands on this machine (tests/golemnet). This
checks the protocol: market, agreements, activities, exec batches,
transfers, debit notes and invoices, and what the executor does with each
fault. It is not execution on Golem (nothing is isolated, no VM runs).

One network serves the module; each test's requestor sees only the providers
of its own subnet: the provider whose behaviour the test is about, cheaper so
that it is offered work first, and a healthy one to take over.
"""

from __future__ import annotations

import re
import sys
import time

import jax
import numpy as np
import pytest

from jfedrl.round.simulator import make_simulator
from jfedrl.run.outputs import read_metrics
from jfedrl.run.runner import train
from offload import OffloadError
from offload.source import source_hash
from tests.golemnet import GolemNetwork, Price, ProviderSpec
from tests.helpers import tiny_config, with_run_dir

pytestmark = [pytest.mark.golem, pytest.mark.timeout(600)]

IMAGE = {
    "offload.golem.image_hash": "0" * 56,
    "offload.golem.image_url": "http://127.0.0.1:9/jfedrl.gvmi",
}
CHEAP, DEAR = Price(per_hour=0.01, per_cpu_sec=0.0, start=0.0), Price(per_hour=0.5, start=0.01)
FAULTS = ("fail", "corrupt", "die")
SLOW_FAULTS = ("fail", "die")  # "corrupt" stands for the three in the default run


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    specs = [
        ProviderSpec("ok-a", subnet="jf-ok", debit_note_interval=1.0),
        ProviderSpec("ok-b", subnet="jf-ok", debit_note_interval=1.0),
    ]
    for fault in FAULTS:
        specs.append(ProviderSpec(fault, behaviour=fault, subnet=f"jf-{fault}", price=CHEAP))
        specs.append(ProviderSpec(f"{fault}-spare", subnet=f"jf-{fault}", price=DEAR))
    # A provider whose worker returns well-formed, plausible, wrong params, and two honest ones.
    lie = (("JFEDRL_FAULT", "wrong_params:attempt=*"),)
    specs.append(ProviderSpec("liar", subnet="jf-verify", price=CHEAP, env=lie))
    specs += [ProviderSpec(f"honest-{i}", subnet="jf-verify", price=DEAR) for i in "ab"]
    # A provider whose image was built from other source.
    stale = (("JFEDRL_SOURCE_HASH", "0" * 16),)
    specs.append(ProviderSpec("stale", subnet="jf-stale", env=stale))
    with GolemNetwork(tmp_path_factory.mktemp("golemnet"), providers=specs) as network:
        yield network


def golem_config(run_dir, subnet, shards=1, rounds=1, **overrides):
    values = {
        "federation.num_clients": 4,
        "federation.rounds": rounds,
        "algo.ppo.num_steps": 32,
        "log.rounds_per_block": 1,
        "offload.executor": "golem",
        "offload.shards": shards,
        "offload.golem.subnet": subnet,
        "offload.golem.max_workers": shards,
        "offload.golem.min_cpu_threads": 1,
        "offload.golem.offer_timeout": 120,
        "offload.golem.task_timeout": 300,
        "offload.golem.health_interval": 5,
        "offload.golem.worker_command": f"{sys.executable} -m offload.worker",
        **IMAGE,
        **overrides,
    }
    return with_run_dir(
        tiny_config(**{k.replace(".", "__"): v for k, v in values.items()}), run_dir
    )


def inprocess(config):
    """The final state of the same run, in process."""
    simulator = make_simulator(config)
    state = simulator.init(jax.random.PRNGKey(config.seed))
    state, _ = simulator.run_block(state, config.federation.rounds)
    return state


def assert_bit_identical(got, want):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def worker_runs(provider) -> int:
    """How many task commands (client of the provider's worker process) a provider ran."""
    return sum("--serve-dir" in " ".join(run) for run in provider.stats["runs"])


def test_happy_path_equals_inprocess_pays_and_leaks_no_key(net, tmp_path, monkeypatch, capfd):
    for key, value in net.requestor_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("JFEDRL_GOLEM_LOG", "debug")  # the REST clients log request headers
    config = golem_config(
        tmp_path / "run", "jf-ok", shards=2, rounds=3, **{"log.rounds_per_block": 3}
    )
    result = train(config, quiet=True)

    assert_bit_identical(result.state, inprocess(config))
    records = result.records
    assert [r["offload/retries"] for r in records] == [0, 0, 0]
    assert [r["offload/state_synced"] for r in records] == [0, 0, 0]  # only params travel...
    assert records[1]["offload/bytes_sent"] < records[0]["offload/bytes_sent"]  # ...after round 1
    spent = [r["golem/spent"] for r in records]
    assert spent == sorted(spent) and 0 < spent[-1] <= config.offload.golem.budget
    # One worker process per provider activity, kept across rounds: each provider's activity
    # started it once (the first task) and the next tasks found it running.
    providers = [net.provider("ok-a"), net.provider("ok-b")]
    assert sum(worker_runs(p) for p in providers) == 2 * (3 + 1)  # 3 rounds + 1 fetch each
    # A graceful end: activities destroyed, agreements finished by the requestor, invoices paid.
    for provider in providers:
        stats = provider.stats
        if not stats["agreements"]:
            continue
        assert stats["destroyed_activities"] == stats["activities"]
        for termination in stats["terminations"].values():
            assert "Successfully finished" in str(termination), termination
        net.wait_for(
            lambda p=provider: (
                p.stats["invoices_issued"] >= 1
                and p.stats["invoices_accepted"] == p.stats["invoices_issued"]
            )
        )
    log = (tmp_path / "run" / "train.log").read_text()
    assert "golem: paid" in log and "Unpaid agreements" not in log
    # The app key is in no log record of any logger, though headers were logged at DEBUG.
    assert "Bearer <YAGNA_APPKEY>" in log
    out, err = capfd.readouterr()
    key = net.app_key.encode()
    assert key not in out.encode() and key not in err.encode()
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert key not in path.read_bytes(), path


@pytest.mark.parametrize(
    "fault", [pytest.param(f, marks=pytest.mark.slow) if f in SLOW_FAULTS else f for f in FAULTS]
)
def test_a_faulty_provider_is_excluded_and_another_serves_the_retry(
    net, tmp_path, monkeypatch, fault
):
    for key, value in net.requestor_env.items():
        monkeypatch.setenv(key, value)
    config = golem_config(tmp_path / "run", f"jf-{fault}")
    start = time.monotonic()
    result = train(config, quiet=True)
    elapsed = time.monotonic() - start

    assert_bit_identical(result.state, inprocess(config))
    (record,) = result.records
    bad, spare = net.provider(fault), net.provider(f"{fault}-spare")
    assert worker_runs(bad) == 1, "the cheap faulty provider is offered the task first"
    assert record["offload/retries"] == 1 and record["offload/tasks_failed"] == 0
    assert record["golem/providers_excluded"] == 1
    assert worker_runs(spare) >= 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"golem: excluding provider {bad.node_id}" in log
    if fault == "corrupt":  # wherever the flipped byte lands, even in tar padding
        assert "bad result: the archive changed in transfer" in log
    if fault == "die":
        assert bad.stats["died"] and elapsed < 150  # lost at once, not after task_timeout


@pytest.mark.slow
def test_the_run_stops_at_the_budget(net, tmp_path, monkeypatch):
    """Debit notes reach the budget: no task starts after that, and what was paid stays in it."""
    for key, value in net.requestor_env.items():
        monkeypatch.setenv(key, value)
    budget = 0.02  # each provider's start fee is 0.01 GLM: two activities use it up
    config = golem_config(
        tmp_path / "run", "jf-ok", shards=2, rounds=4, **{"offload.golem.budget": budget}
    )
    with pytest.raises(OffloadError, match="golem: the budget is spent"):
        train(config, quiet=True)
    records = read_metrics(tmp_path / "run")
    assert 1 <= len(records) < 4  # it stopped early, and the rounds done are kept
    assert all(r["golem/spent"] <= budget for r in records)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "golem: paid" in log  # the graceful end ran on the way out


def assert_no_key(net, run_dir) -> None:
    """The app key is in no file the run wrote (its train.log holds every new log line)."""
    key = net.app_key.encode()
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert key not in path.read_bytes(), path


def shards_served(provider) -> set[int]:
    """The shards whose tasks a provider ran (from the task names of its worker requests)."""
    names = [run[-1] for run in provider.stats["runs"] if "--serve-dir" in " ".join(run)]
    return {int(m) for text in names for m in re.findall(r"requests/\.(\d{3})-", text)}


def test_four_shards_on_two_providers_equal_inprocess(net, tmp_path, monkeypatch):
    """Fewer providers than shards: after `spare_wait`, the two serve two shards each."""
    for key, value in net.requestor_env.items():
        monkeypatch.setenv(key, value)
    config = golem_config(
        tmp_path / "run",
        "jf-ok",
        shards=4,
        rounds=2,
        **{"federation.num_clients": 8, "offload.golem.spare_wait": 3, "log.rounds_per_block": 2},
    )
    result = train(config, quiet=True)

    assert_bit_identical(result.state, inprocess(config))
    assert [r["offload/tasks_failed"] for r in result.records] == [0, 0]
    assert [r["offload/clients_lost"] for r in result.records] == [0, 0]
    providers = [net.provider("ok-a"), net.provider("ok-b")]
    served = [shards_served(p) for p in providers]
    assert served[0] | served[1] == {0, 1, 2, 3}, served
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("offload.golem.spare_wait=3s") == 2, "two shards were hosted"
    assert "no provider took" not in log
    assert_no_key(net, tmp_path / "run")


@pytest.mark.slow
def test_two_providers_one_fails_the_other_serves_both(net, tmp_path, monkeypatch):
    """The failing provider is excluded; its shard goes to the other within `spare_wait`."""
    for key, value in net.requestor_env.items():
        monkeypatch.setenv(key, value)
    config = golem_config(
        tmp_path / "run", "jf-fail", shards=2, rounds=2, **{"offload.golem.spare_wait": 3}
    )
    start = time.monotonic()
    result = train(config, quiet=True)
    elapsed = time.monotonic() - start

    assert_bit_identical(result.state, inprocess(config))
    assert [r["offload/tasks_failed"] for r in result.records] == [0, 0]
    assert result.records[-1]["golem/providers_excluded"] == 1
    assert shards_served(net.provider("fail-spare")) == {0, 1}
    log = (tmp_path / "run" / "train.log").read_text()
    assert "no provider took" not in log
    print(f"2 providers, one failing: 2 rounds in {elapsed:.1f} s")
    assert elapsed < config.offload.golem.offer_timeout


def test_a_provider_returning_wrong_params_is_outvoted(net, tmp_path, monkeypatch):
    """verify_fraction 1: every task runs twice; the liar's result differs, a third decides."""
    for key, value in net.requestor_env.items():
        monkeypatch.setenv(key, value)
    config = golem_config(
        tmp_path / "run",
        "jf-verify",
        rounds=2,
        **{
            "offload.state_sync_rounds": 0,
            "offload.golem.verify_fraction": 1.0,
            "offload.golem.spare_wait": 3,
            "offload.golem.max_workers": 3,
            "log.rounds_per_block": 2,
        },
    )
    result = train(config, quiet=True)

    assert_bit_identical(result.state, inprocess(config))
    first, second = result.records
    assert first["offload/verify_disagreements"] == 1 and first["offload/verify_runs"] == 2
    assert second["offload/verify_disagreements"] == 0 and second["offload/verify_runs"] == 1
    assert first["offload/verify_seconds"] > 0
    assert second["golem/providers_excluded"] == 1
    liar = net.provider("liar")
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"{liar.node_id} outvoted and its result discarded" in log
    assert f"golem: excluding provider {liar.node_id}" in log
    assert worker_runs(liar) == 1
    assert_no_key(net, tmp_path / "run")


def test_a_stale_image_fails_the_first_task_in_one_line(net, tmp_path, monkeypatch):
    for key, value in net.requestor_env.items():
        monkeypatch.setenv(key, value)
    config = golem_config(tmp_path / "run", "jf-stale", rounds=2)
    with pytest.raises(OffloadError) as caught:
        train(config, quiet=True)
    message = str(caught.value)
    assert message.startswith("golem: stale image: the worker runs jfedrl source 0000000000000000")
    assert source_hash() in message and "scripts/build_golem_image.sh" in message
    assert "\n" not in message
    assert worker_runs(net.provider("stale")) == 1, "the first task ends the run"
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not read_metrics(tmp_path / "run")
    assert_no_key(net, tmp_path / "run")


def test_golem_offers_lists_the_matching_providers_and_dry_run_estimates(
    net, tmp_path, monkeypatch, capsys
):
    """What a user sees before paying: the offers for the run's demand, and GLM per round."""
    from jfedrl import cli

    for key, value in net.requestor_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    base = ["--golem.subnet", "jf-ok", "--golem.min-cpu-threads", "1"]
    assert cli.main(["offload", "golem-offers", *base, "--wait", "6"]) == 0
    out = capsys.readouterr().out
    providers = [net.provider("ok-a"), net.provider("ok-b")]
    assert out.startswith("golem: 2 provider(s) offer")
    spec = providers[0].spec
    for provider in providers:
        (row,) = [line for line in out.splitlines() if provider.node_id in line]
        cells = row.split()
        assert cells[1] == provider.name and int(cells[2]) == spec.cpu_threads
        assert float(cells[5]) == pytest.approx(spec.price.start)
        assert float(cells[6]) == pytest.approx(spec.price.per_hour)
    # The demand is the run's: more memory than they offer, or a GPU, matches none.
    assert cli.main(["offload", "golem-offers", *base, "--golem.min-mem-gib", "64"]) == 0
    assert capsys.readouterr().out.startswith("golem: no offer matches")
    assert cli.main(["offload", "golem-offers", *base, "--golem.gpu", "--wait", "3"]) == 0
    assert capsys.readouterr().out.startswith("golem: no offer matches")

    flags = ["--executor", "golem", "--golem.image-hash", "0" * 56, "--clients", "4"]
    flags += ["--shards", "2", "--rounds", "50", "--golem.offer-timeout", "6", *base]
    assert cli.main(["train", "--no-progress", "--dry-run", *flags]) == 0
    out = capsys.readouterr().out
    assert "offload: 2 shard task(s) per round (golem)" in out
    assert "a shard of 2 clients: task" in out
    task = 600.0 / 3600  # offload.golem.task_timeout, hours
    per_task = spec.price.per_hour * task + spec.price.per_cpu_sec * 3600 * task * 4
    rounds = int((1.0 - 2 * spec.price.start) // (2 * per_task))
    assert f"estimate at most {2 * per_task:.4g} GLM per round" in out
    assert f"covers {rounds} round(s), the run has 50" in out
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing
