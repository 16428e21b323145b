"""trio_channels as the benchmark runs it: ``python -m trio_channels`` plus the SIGUSR1 task report.

    python -m benchmarks.ours run benchmarks.app.routing --bind 127.0.0.1:0 --layer memory:// -v 0

Exactly the CLI (same arguments, same process layout: interface and workers in one process);
only :func:`benchmarks._instrument.install` runs first.
"""

from __future__ import annotations

import sys

from trio_channels.cli import main

from ._instrument import install

if __name__ == "__main__":
    install()
    sys.exit(main())
