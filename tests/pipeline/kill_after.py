"""Run the `sanitize` CLI and `kill -9` it right after the COUNT-th file matching PATTERN is put in place.

    python tests/pipeline/kill_after.py PATTERN COUNT -- sanitize-args…

Every file the package writes goes through `os.replace` (sanitize/io/atomic.py), so wrapping it stops the run at
an exact point of a stage (after a shard's marker, a clustering's checkpoint, the first audit report file)
with a real SIGKILL: no cleanup, no flush, as after a crash. Exits 0 when PATTERN never matched COUNT times.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import sys


def main() -> None:
    pattern, count = sys.argv[1], int(sys.argv[2])
    args = sys.argv[sys.argv.index("--") + 1:]
    real_replace = os.replace
    seen = 0

    def replace_then_maybe_die(src, dst, *a, **kw):
        nonlocal seen
        real_replace(src, dst, *a, **kw)
        if fnmatch.fnmatch(os.fspath(dst), pattern):
            seen += 1
            if seen >= count:
                os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace_then_maybe_die
    from sanitize_cli.main import main as cli_main

    sys.argv = ["sanitize", *args]
    cli_main()


if __name__ == "__main__":
    main()
