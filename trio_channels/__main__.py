"""``python -m trio_channels`` -> :func:`trio_channels.cli.main`."""

import sys

from .cli import main

sys.exit(main())
