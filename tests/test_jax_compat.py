"""The guards around JAX's private APIs: each one degrades with one log line."""

from __future__ import annotations

import importlib
import logging

import pytest

from jfedrl.round import xla_cpu
from jfedrl.run import distributed


def _jfedrl_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "jfedrl"]


def test_threefry_unrolling_registers_on_this_jax():
    assert xla_cpu.unroll_threefry_on_cpu() is True


def test_threefry_unrolling_without_the_private_rule_logs_one_line(monkeypatch, caplog):
    for name in xla_cpu.THREEFRY_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        monkeypatch.delattr(module, "_threefry2x32_lowering_rule", raising=False)
    with caplog.at_level(logging.INFO, logger="jfedrl"):
        assert xla_cpu.unroll_threefry_on_cpu() is False
    (record,) = _jfedrl_records(caplog)
    assert "threefry stays a rolled loop on CPU" in record.getMessage()
    assert "_threefry2x32_lowering_rule" in record.getMessage()


def test_threefry_unrolling_without_the_private_modules_logs_one_line(monkeypatch, caplog):
    monkeypatch.setattr(xla_cpu, "THREEFRY_MODULES", ("jax._src.no_such_prng",))
    with caplog.at_level(logging.INFO, logger="jfedrl"):
        assert xla_cpu.unroll_threefry_on_cpu() is False
    (record,) = _jfedrl_records(caplog)
    assert "jax._src.no_such_prng" in record.getMessage()


@pytest.fixture
def two_processes(monkeypatch):
    """`barrier` as if this process were one of two, with a fresh client lookup."""
    monkeypatch.setattr(distributed, "multiprocess", lambda: True)
    distributed._coordination_barrier.cache_clear()
    yield
    distributed._coordination_barrier.cache_clear()


def test_barrier_waits_at_the_coordination_service(monkeypatch, two_processes, caplog):
    from jax._src import distributed as runtime

    calls = []

    class Client:
        def wait_at_barrier(self, barrier_id, timeout_ms):
            calls.append((barrier_id, timeout_ms))

    class State:
        client = Client()

    monkeypatch.setattr(runtime, "global_state", State())
    with caplog.at_level(logging.INFO, logger="jfedrl"):
        distributed.barrier("compiled", timeout_seconds=7)
        distributed.barrier("compiled", timeout_seconds=7)
    assert [ms for _, ms in calls] == [7000, 7000]
    assert calls[0][0] != calls[1][0] and calls[0][0].startswith("jfedrl/compiled/")
    assert _jfedrl_records(caplog) == []


def test_barrier_without_the_private_client_falls_back_with_one_line(
    monkeypatch, two_processes, caplog
):
    from jax._src import distributed as runtime
    from jax.experimental import multihost_utils

    monkeypatch.delattr(runtime, "global_state")
    synced = []
    monkeypatch.setattr(multihost_utils, "sync_global_devices", synced.append)
    with caplog.at_level(logging.INFO, logger="jfedrl"):
        distributed.barrier("compiled")
        distributed.barrier("compiled")
    assert len(synced) == 2 and synced[0] != synced[1]
    assert all(name.startswith("jfedrl/compiled/") for name in synced)
    (record,) = _jfedrl_records(caplog)
    assert "sync_global_devices" in record.getMessage()
