"""CPU-bound steps: the same flow on threads, then on a process pool.

Pure-Python work holds the GIL, so on threads eight items take as long as
running them one after another. Passing ``executor=ProcessPoolExecutor(2)``
is the one change that spreads them over two cores: each body (and its
arguments) is pickled to a worker process and its value comes back; gates,
retries, limits and the journal stay in this process.

Tasks must be defined at module level (workers find them by name), and the
flow must run under ``if __name__ == "__main__":`` (a spawn or forkserver
pool imports this script again in each worker).

Run it: python3 examples/cpu_bound.py
"""

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowing import Flow, current, task  # noqa: E402


def crunch(n):
    """Pure-Python arithmetic: no I/O, no C extension releasing the GIL."""
    total = 0
    for i in range(n):
        total = (total + i * i) % 1_000_003
    return total


def calibrate(seconds=0.3):
    """The n for which crunch(n) takes about ``seconds`` here."""
    t0 = time.perf_counter()
    crunch(200_000)
    return int(200_000 * seconds / max(time.perf_counter() - t0, 1e-6))


@task
def chunks(size):  # ``size`` comes from Flow(inputs=...)
    return [size + i for i in range(8)]  # eight items of about 0.3 s each


@task(depends_on=[chunks], for_each=chunks)
def score(chunks):
    return {"item": current().item_index, "value": crunch(chunks), "pid": os.getpid()}


@task(depends_on=[score])
def total(score):
    return sum(s["value"] for s in score), len({s["pid"] for s in score})


def run(label, size, **flow_kw):
    flow = Flow(total, max_workers=2, log=False, inputs={"size": size}, **flow_kw)
    t0 = time.perf_counter()
    results = flow.run()
    elapsed = time.perf_counter() - t0
    value, processes = results["total"].value
    print(f"{label:<28} {elapsed:5.2f} s   (bodies ran in {processes} process(es))")
    return elapsed, value


if __name__ == "__main__":
    size = calibrate()
    on_threads, a = run("threads (the default)", size)
    with ProcessPoolExecutor(2) as pool:
        on_processes, b = run("ProcessPoolExecutor(2)", size, executor=pool)
    assert a == b
    print(f"speedup: {on_threads / on_processes:.2f}x on {os.cpu_count()} core(s)")
