"""Shared test settings: a small, fast CPU setup."""

import logging
import os
import tempfile

import pytest

# One compilation cache per test session, away from the user's cache.
os.environ.setdefault("JFEDRL_COMPILATION_CACHE", tempfile.mkdtemp(prefix="jfedrl-xla-"))


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
