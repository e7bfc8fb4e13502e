"""A Dask cluster whose environment lacks flowing (a real ``dask scheduler`` started
with a PYTHONPATH without this checkout): the call it cannot deserialize fails the task
with CannotShip naming the cause and the fix, never as a lost worker. One scheduler for
the module; no worker is needed, the scheduler refuses the call itself."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

distributed = pytest.importorskip("distributed")

from flowing import CannotShip, Flow, StepState, WorkerLost, task  # noqa: E402


@pytest.fixture(scope="module")
def bare_scheduler(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bare-cluster")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    log = open(folder / "scheduler.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                             "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0"],
                            cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        address = None
        deadline = time.monotonic() + 60
        while address is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            m = re.search(r"tcp://127\.0\.0\.1:\d+", (folder / "scheduler.log").read_text())
            address = m.group(0) if m else None
        assert address, (folder / "scheduler.log").read_text()
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@task
def hello():
    return 42


def test_a_cluster_without_flowing_is_cannot_ship_not_worker_lost(bare_scheduler):
    with distributed.Client(bare_scheduler, timeout=30) as client:
        r = Flow(hello, executor=client, log=False).run()["hello"]
    assert r.state is StepState.FAILED
    assert isinstance(r.error, CannotShip) and not isinstance(r.error, WorkerLost), r.error
    text = str(r.error)
    assert "'hello'" in text and "deserializ" in text and "install flowing" in text
    assert r.attempts == 1  # not retried: no retry can mend it
