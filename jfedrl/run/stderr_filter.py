"""Keeps XLA's spurious compilation-cache lines off the CLI's stderr, and nothing else.

With the persistent compilation cache, jaxlib 0.9's XLA:CPU logs an `E` line of
about 3 KB for each executable it loads from the cache when the compile-time
feature list holds LLVM's tuning pseudo-features `+prefer-no-gather` /
`+prefer-no-scatter`, which no host feature list ever names (later XLA
releases skip `prefer-` and `fast-` features in that comparison), and a `W`
line that PjRt does not track executable versions (the cache's key already
holds jax's and jaxlib's versions). Both appear on every cached run on the
machine that compiled the entries. The cache folder is keyed by this CPU
(`runner.enable_compilation_cache`), so a genuine mismatch of instruction
sets cannot come from it; should one appear anyway, its line names a real
feature (`+avx512f`) and is kept.

The lines come from XLA's C++ logging, which writes straight to file
descriptor 2, and its only switch (`TF_CPP_MIN_LOG_LEVEL`) silences every C++
error with them. So `install` routes descriptor 2 through a small filter
process that drops exactly these lines and passes everything else on at once,
byte for byte. A separate process, not a thread: when the CLI dies (an abort
in XLA), the filter still drains the pipe, so a fatal message is never lost.
Python's own `sys.stderr` (logging, the progress bar, tracebacks) keeps the
original stream, so a terminal stays a terminal. Only the `jfedrl` command
installs it; importing jfedrl changes nothing.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

#: The dropped lines, as regular expressions over one line of bytes.
SPURIOUS = (
    rb"cpu_aot_loader\.cc:\d+\] Loading XLA:CPU AOT result\. Target machine feature "
    rb"\+(prefer|fast)-[\w-]+ is not ",
    rb"pjrt_executable\.cc:\d+\] Assume version compatibility\. PjRt-IFRT does not track "
    rb"XLA executable versions\.",
)

#: The filter process: stdin to stdout, line by line, without the spurious lines.
_FILTER = """
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the CLI's; EOF ends the filter
signal.signal(signal.SIGTERM, signal.SIG_IGN)
spurious = re.compile(b"|".join(%r))
source, sink = sys.stdin.buffer, sys.stdout.fileno()
for line in iter(source.readline, b""):
    if not spurious.search(line):
        while line:
            try:
                line = line[os.write(sink, line):]
            except BrokenPipeError:
                sys.exit(0)
"""


def is_spurious(line: bytes) -> bool:
    """Whether the filter drops `line` (one line of C-level stderr)."""
    return any(re.search(pattern, line) for pattern in SPURIOUS)


_process: subprocess.Popen | None = None


def install() -> bool:
    """Routes file descriptor 2 through the filter process; True if it did.

    Call it before JAX is imported (jaxlib keeps its own handle on descriptor 2
    from then on). `sys.stderr` is rebound to the original stream. Does nothing
    where `JFEDRL_RAW_STDERR` is set, or where descriptor 2 is closed.
    """
    if os.environ.get("JFEDRL_RAW_STDERR"):
        return False
    try:
        original = os.dup(2)
    except OSError:
        return False
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _FILTER % (SPURIOUS,)],
            stdin=subprocess.PIPE,
            stdout=original,
            stderr=original,
            close_fds=True,
        )
    except OSError:
        os.close(original)
        return False
    global _process
    _process = process  # kept: it ends by itself at the EOF of the CLI's exit
    sys.stderr.flush()
    os.dup2(process.stdin.fileno(), 2)
    process.stdin.close()  # descriptor 2 holds the pipe now; its close is the filter's EOF
    stream = io.TextIOWrapper(
        os.fdopen(original, "wb", buffering=0),
        encoding=sys.stderr.encoding,
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )
    sys.stderr = stream
    return True
