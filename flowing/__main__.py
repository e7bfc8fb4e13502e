"""The command line (see flowing.cli), runnable two ways.

    python3 -m flowing journal show run.jsonl          # flowing importable (installed, or cwd)
    python3 path/to/flowing journal show run.jsonl     # a bare copy of the package folder

Run the second way, Python executes this file with the package folder itself
as ``sys.path[0]`` and no parent package, so ``flowing`` would not import (and
its modules could shadow others by their bare names). Then the folder holding
the package goes first on ``sys.path`` instead, the package folder is dropped
from it, and ``flowing`` is imported from this very copy: no install and no
PYTHONPATH are needed.
"""

import os
import sys

if not __package__:
    _here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

from flowing.cli import main  # noqa: E402 - after the sys.path fix above

sys.exit(main())
