"""Shared test settings: a small, fast CPU setup."""

import logging
import os
import tempfile

import jax
import pytest

from jfedrl.run import startup

# One compilation cache per test session, away from the user's cache.
os.environ.setdefault("JFEDRL_COMPILATION_CACHE", tempfile.mkdtemp(prefix="jfedrl-xla-"))

# What `jfedrl train` runs with, for the many tests that build a simulator directly:
# the unrolled CPU Threefry (bit-identical draws, the snapshots' programs).
startup.prepare_process()
# The backend starts now, so an in-process `cli.main(["train", ...])` cannot change the
# session's device count (`$XLA_FLAGS` still sets it); layouts are tested in subprocesses.
jax.devices()


@pytest.fixture
def jfedrl_warnings():
    """The messages the `jfedrl` logger warns while the test runs (whatever its handlers)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler, logger = Collect(logging.WARNING), logging.getLogger("jfedrl")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)
