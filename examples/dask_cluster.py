"""The same CPU-bound flow on a Dask cluster.

``Flow(..., executor=client)`` ships each body to the cluster's workers
(with cloudpickle, so lambdas and closures work too) and brings the value
back; scheduling, gates, retries, limits and the journal stay in this
process. ``client.get_executor()`` works the same way.

Here the cluster is a LocalCluster of two worker processes on this machine.
For a real cluster, start ``dask scheduler`` and ``dask worker`` processes
anywhere and point the client at the scheduler instead:

    client = Client("tcp://scheduler-host:8786")

Nothing needs installing on the workers: when they cannot import flowing or
this script's modules, flowing sends them itself. A step that must run on
this machine (writing the outputs, reading local files) is declared
``@task(local=True)``. If this script is killed, bodies running on the
workers are lost and redone on the next run; journaled results are kept.

Set ``max_workers`` to the number of bodies you want in flight on the
cluster (e.g. ``sum(client.nthreads().values())``). Needs
``pip install "flowing[dask]"``. Run it: python3 examples/dask_cluster.py
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowing import Flow, current, task  # noqa: E402


def crunch(n):
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


@task(depends_on=[chunks], for_each=chunks, retry=2, timeout_s=30)
def score(chunks):
    return {"item": current().item_index, "value": crunch(chunks), "pid": os.getpid()}


@task(depends_on=[score])
def total(score):
    return sum(s["value"] for s in score), len({s["pid"] for s in score})


if __name__ == "__main__":
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        # a real cluster: Client("tcp://scheduler-host:8786"), no LocalCluster
        slots = sum(client.nthreads().values())
        flow = Flow(total, executor=client, max_workers=slots, log=False,
                    inputs={"size": calibrate()})
        t0 = time.perf_counter()
        results = flow.run()
        elapsed = time.perf_counter() - t0
    value, processes = results["total"].value
    print(flow.summary())
    print(f"8 items on {slots} Dask worker slot(s): {elapsed:.2f} s, "
          f"bodies ran in {processes} worker process(es)")
