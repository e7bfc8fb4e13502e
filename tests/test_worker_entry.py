"""The worker's side of a shipped call is reached by name: process pools unpickle
``flowing.runners.worker.run_shipped``, and on Dask ``shipping.ENTRY`` (standard
library only) imports it after putting a bundle on ``sys.path``. These tests run
that path without a cluster, and keep the worker's module free of the flow's
side of shipping."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import flowing
import flowing.runners.worker as worker

REPO = Path(__file__).resolve().parent.parent

ENTRY_SCRIPT = textwrap.dedent('''
    import pickle, sys, zipfile
    from flowing.runners import shipping, worker

    def double(x):
        return 2 * x

    def boom(x):
        raise KeyError(x)

    worker._bodies[b"stale"] = print  # a body unpickled under the previous bundle
    bundle = sys.argv[1]
    zipfile.ZipFile(bundle, "w").close()  # empty: flowing is importable here already
    call = pickle.dumps(({"x": 21}, ("double", 1, 1, None, None), None, False, (), None))
    code, data = shipping.ENTRY(bundle, (), "run_shipped", pickle.dumps(double), call, False)
    print(code, pickle.loads(data), b"stale" in worker._bodies, sys.path[0] == bundle)
    # keep (a Dask task whose value stays on the worker): the value itself
    print(shipping.ENTRY(bundle, (), "run_shipped", pickle.dumps(double), call, False, True))
    code, data = shipping.ENTRY(bundle, (), "run_shipped", pickle.dumps(boom), call, False)
    error, tb = pickle.loads(data)
    print(code, type(error).__name__, error.args, "boom" in tb)
    # what the journal needs of a value kept there: its digest and its pickle
    from flowing.keys.digest import DIGEST_VERSION, value_digest
    from flowing.version import __version__
    code, digest, immutable, small, frame, *buffers = shipping.ENTRY(
        bundle, (), "store_form", [1, 2], (__version__, DIGEST_VERSION), "script", True)
    print(code, digest == value_digest([1, 2]), immutable, pickle.loads(small), frame, buffers)
    print(shipping.ENTRY(bundle, (), "store_form", [1, 2], ("0.0.1", DIGEST_VERSION), "script",
                         True))
''')


def test_a_dask_worker_given_a_bundle_runs_the_call_through_the_worker_module(tmp_path):
    """ENTRY on a worker that got a new bundle: the bundle goes first on sys.path, the
    bodies unpickled under the previous one are forgotten, and the call runs through
    ``flowing.runners.worker.run_shipped`` (a value, a kept value, a raised error)."""
    proc = subprocess.run([sys.executable, "-c", ENTRY_SCRIPT, str(tmp_path / "b.zip")],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "0 42 False True",
        "42",
        f"{worker.RAISED} KeyError (21,) True",
        f"{worker.STORED} True False [1, 2] None []",
        f"({worker.UNSHIPPABLE}, \"the worker's flowing is {flowing.__version__}, the flow's "
        f"0.0.1\")",
    ]


def test_the_worker_module_imports_none_of_the_flow_side():
    """What a worker imports to run a call stays small: never the runners, the
    pickling and submitting of calls, or the bundle shipping (flow side only), and
    nothing outside the standard library at module level."""
    tree = ast.parse(Path(worker.__file__).read_text())
    imported = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            base = "flowing.runners" if node.level == 1 else "flowing" if node.level == 2 else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            imported.update(f"{module}.{a.name}" if not node.module else module
                            for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    flow_side = {f"flowing.runners.{m}" for m in ("base", "local", "calls", "remote", "shipping")}
    assert not imported & flow_side
    third_party = {m for m in imported if not m.startswith("flowing")
                   and m.partition(".")[0] not in sys.stdlib_module_names}
    assert not third_party
    assert imported >= {"flowing.runners.attempt"}  # the walk saw the module's imports


def test_the_worker_keeps_on_a_dask_cluster_what_the_journal_would_store_beside_it():
    """With a journal, a value stays on its Dask worker only when its pickle is too big
    for a journal line: the worker's limit is the store's."""
    from flowing.journal.values import THRESHOLD

    assert worker._SMALL_PICKLE == THRESHOLD
    small = worker._pickled_if_small
    assert small(b"x" * (THRESHOLD - 100), THRESHOLD) is not None
    assert small(b"x" * THRESHOLD, THRESHOLD) is None
    assert small(list(range(10)), THRESHOLD) == __import__("cloudpickle").dumps(
        list(range(10)), protocol=5)
    with pytest.raises(TypeError):  # it still checks that a big value pickles
        small([b"x" * THRESHOLD, threading.Lock()], THRESHOLD)


def _pause(x):
    import time

    time.sleep(0.05)
    return x


def _echo(x):
    return x


def test_a_batch_reports_how_long_each_of_its_calls_took():
    # The flow learns which bodies are quick from these: a slow body sharing a
    # batch with quick ones must not look quick by the batch's mean.
    import pickle

    call = pickle.dumps(({"x": 3}, ("t", 1, 1, None, None), None, False, (), None))
    calls = ((pickle.dumps(_echo), call), (pickle.dumps(_pause), call),
             (pickle.dumps(_echo), call))
    done, seconds = worker.run_batch(calls, False)
    assert [(code, pickle.loads(data)) for code, data in done] == [(worker.OK, 3)] * 3
    assert len(seconds) == 3 and seconds[1] >= 0.05  # (a lower bound: sleep's own promise)
    assert all(type(s) is float and s >= 0 for s in seconds)
