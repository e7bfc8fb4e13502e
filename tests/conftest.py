import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from flowing import clear_registry  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_registry():
    """Detached auto-discovery is process-wide: start every test with an empty registry."""
    clear_registry()
    yield
    clear_registry()


@pytest.fixture
def repo_env():
    """Environment for subprocesses that import flowing from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env
