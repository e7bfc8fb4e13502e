"""``python -m flowing``: the command line (see flowing.cli)."""

import sys

from .cli import main

sys.exit(main())
