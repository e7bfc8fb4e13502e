"""A terminal's Ctrl-C (SIGINT to the whole process group) stops a run whose bodies run
in a fork process pool started during the run — by the caller's executor spawning its
workers lazily, or by a body making a pool of its own: the workers get Python's default
SIGINT disposition, not flowing's, so the process and its workers exit promptly."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"),
                                reason="POSIX signals and fork")

SCRIPT = textwrap.dedent("""
    import multiprocessing, os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from flowing import Flow, task

    FOLDER = sys.argv[1]

    def sleep_long():
        open(os.path.join(FOLDER, f"worker-{os.getpid()}"), "w").close()
        time.sleep(40)
        return 1

    @task
    def a():
        return sleep_long()

    @task
    def b():
        return sleep_long()

    @task
    def nested():   # a body with a fork pool of its own
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
            return sum(f.result() for f in [pool.submit(sleep_long) for _ in range(2)])

    if __name__ == "__main__":
        if sys.argv[2] == "executor":
            # made before run(); its workers start lazily, during the run
            with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as ex:
                Flow(a, b, executor=ex, max_workers=2, log=False).run()
        else:
            Flow(nested, log=False).run()
""")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is as good as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


@pytest.mark.parametrize("where", ["executor", "body"])
def test_terminal_ctrl_c_ends_process_and_its_pool_workers(tmp_path, repo_env, where):
    script = tmp_path / "flow.py"
    script.write_text(SCRIPT)
    folder = tmp_path / "pids"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(folder), where], env=repo_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    workers = []
    try:
        deadline = time.monotonic() + 30
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = [int(p.name.split("-")[1]) for p in folder.iterdir()]
            time.sleep(0.05)
        assert len(workers) == 2, "the bodies never started"
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it: the whole group
        # generous: the bodies sleep 40 s, so this only passes if nothing waits for them
        ended = threading.Event()
        threading.Thread(target=lambda: (proc.wait(), ended.set()), daemon=True).start()
        assert ended.wait(20), "the process is still running 20 s after Ctrl-C"
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [pid for pid in workers if _alive(pid)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not left, "pool workers outlived the Ctrl-C"
    assert "KeyboardInterrupt" in proc.stderr.read()
