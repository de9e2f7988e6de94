"""Shared test settings: a small, fast CPU setup."""

import os
import tempfile

# One compilation cache per test session, away from the user's cache.
os.environ.setdefault("JFEDRL_COMPILATION_CACHE", tempfile.mkdtemp(prefix="jfedrl-xla-"))
