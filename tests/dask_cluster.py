"""A real Dask cluster for tests: a ``dask scheduler`` and ``dask worker`` processes
started in their own folder, on loopback, with a PYTHONPATH that does not hold this
checkout (nothing of flowing's, nor of a test script's, can be imported there), and
stopped (their process groups killed) at the end. Bounded waits throughout."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


# Runs ``python -m MODULE ARGS`` in an interpreter that cannot import this checkout even
# where it is installed in editable mode (``pip install -e .`` puts a finder for it on
# every interpreter of the environment, as the test command does): the finder and any
# path entry leading here are removed before the module starts, as on a machine that
# has only the engine installed.
_LAUNCH = """
import runpy, sys
repo = sys.argv.pop(1)
sys.meta_path[:] = [f for f in sys.meta_path
                    if not str(getattr(f, "__module__", "")).startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks
                     if "__editable__" not in str(getattr(h, "__module__", ""))
                     and "__editable__" not in str(getattr(h, "__qualname__", ""))]
sys.path[:] = [p for p in sys.path if "__editable__" not in p and p.rstrip("/") != repo]
sys.path_importer_cache.clear()
sys.argv.pop(0)
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""
_REPO = str(Path(__file__).resolve().parent.parent)


def _start(args: list[str], folder: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", _LAUNCH, _REPO, *args], cwd=folder,
                                env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def external_cluster(folder: Path, workers: int = 2) -> Iterator[str]:
    """Start a scheduler and ``workers`` single-threaded workers in ``folder``;
    yields the scheduler's address once every worker has connected."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        log = folder / "scheduler.log"
        procs.append(_start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                             "--port", "0", "--no-dashboard"], folder, log))
        address = None
        deadline = time.monotonic() + 60
        while address is None and time.monotonic() < deadline and procs[0].poll() is None:
            time.sleep(0.2)
            m = re.search(r"tcp://127\.0\.0\.1:\d+", log.read_text())
            address = m.group(0) if m else None
        assert address, log.read_text()
        for n in range(workers):
            wfolder = folder / f"worker{n}"
            wfolder.mkdir(exist_ok=True)
            procs.append(_start(["distributed.cli.dask_worker", address, "--nthreads", "1",
                                 "--nworkers", "1", "--host", "127.0.0.1", "--no-dashboard",
                                 "--no-nanny", "--local-directory", str(wfolder)],
                                wfolder, folder / f"worker{n}.log"))
        if workers:
            import distributed

            with distributed.Client(address, timeout=30) as client:
                client.wait_for_workers(workers, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)


@contextlib.contextmanager
def local_client(workers: int, threads: int, **scheduler_kwargs: object) -> Iterator[object]:
    """A ``Client`` of a ``LocalCluster`` of ``workers`` processes with ``threads``
    threads each, closed (bounded) at the end."""
    import distributed  # the engine is optional: only its test modules import it

    cluster = distributed.LocalCluster(processes=True, n_workers=workers,
                                       threads_per_worker=threads, dashboard_address=":0",
                                       scheduler_kwargs=scheduler_kwargs)
    client = distributed.Client(cluster)
    try:
        client.wait_for_workers(workers, timeout=60)
        yield client
    finally:
        client.close(timeout=30)
        cluster.close(timeout=30)
