#!/usr/bin/env python3
"""Bodies on other processes: what a process pool or a Dask cluster buys, and costs.

    python3 bench/remote.py                  # full run, about two minutes on 2 cores
    python3 bench/remote.py --quick          # fewer repeats
    python3 bench/remote.py --only cpu,dask  # some sections (cpu, dask, big, process)

Rows (each figure the median of several runs, flowing beside a raw baseline
measured in the same run; engines are started and warmed up before timing):

  cpu       for_each of 8 items of pure-Python work (~0.3 s each): wall time
            on threads over wall time on ProcessPoolExecutor(2) (target >= 1.7)
            and on a Dask LocalCluster of 2 workers x 1 thread (target >= 1.6).
  dask      no-op tasks through flowing on Dask, per task, over raw
            ``client.submit`` of the same graph with futures as arguments:
            wide root -> 400 -> sink (target <= 1.3), also journaled; a chain
            of 100 beside the raw hand-off (submit, wait, submit the next).
  big       a 200 MB bytes value through load -> size -> sink on Dask, over
            the raw chain with futures as arguments (target <= 1.3): the
            value stays on the workers. Then journaled, over the raw chain
            that also fetches the value and writes it to a file.
  process   no-op tasks through flowing on ProcessPoolExecutor(2), per task,
            over raw ``submit`` + ``result`` (target <= 1.3): wide (all
            submitted, then all waited for) and a chain (hand-off). Quick
            bodies are batched by flowing; the wide rows also show raw
            ``pool.map(chunksize=16)``, the pool's own batching.

A MISS is reported, never fatal. Needs ``distributed`` for the Dask rows
(skipped without it).
"""

import multiprocessing
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from flowing import Flow, task  # noqa: E402


def spin(n):
    """Pure-Python CPU work: holds the GIL throughout."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def calibrate(seconds=0.3):
    """n for which spin(n) takes ``seconds`` on one free core (the fastest of 3 tries)."""
    n = 200_000
    while True:
        took = min(timed(lambda n=n: spin(n)) for _ in range(3))
        if took > 0.05:
            return int(n * seconds / took)
        n *= 4


def noop(*args, **kwargs):
    return None


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(runs, cases):
    """Run every case ``runs`` times, alternating, -> median seconds per case."""
    times = {name: [] for name in cases}
    for _ in range(runs):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    return {name: median(ts) for name, ts in times.items()}


# ----- graphs ---------------------------------------------------------------------------


def cpu_flow(n_items, work_n, **flow_kw):
    items = task(make_items, name="items")
    spun = task(spin_item, name="spun", depends_on=[items], for_each=items)
    return Flow(spun, log=False, inputs={"n_items": n_items, "work_n": work_n}, **flow_kw)


def make_items(n_items, work_n):
    return [work_n] * n_items


def spin_item(items):
    return spin(items)


def wide_flow(width, **flow_kw):
    root = task(noop, name="root")
    mids = [task(noop_dep, name=f"m{i}", depends_on=[root]) for i in range(width)]
    sink = task(noop, name="sink", depends_on=mids)
    return Flow(sink, log=False, **flow_kw)


def chain_flow(length, **flow_kw):
    t = task(noop, name="c0")
    for i in range(1, length):
        t = task(noop_dep_c, name=f"c{i}", depends_on=[t])
    return Flow(t, log=False, **flow_kw)


def noop_dep(root):
    return None


def noop_dep_c(**kwargs):
    return None


def checked(flow):
    res = flow.run()
    bad = [r for r in res.values() if not r.ok]
    if bad:
        raise RuntimeError(f"{bad[0].name}: {bad[0].error}")


# ----- sections -------------------------------------------------------------------------


def bench_cpu(rows, runs, work_n, client):
    from concurrent.futures import ProcessPoolExecutor

    threads = cpu_flow(8, work_n, max_workers=2)
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(spin, [1000, 1000]))  # workers up
        procs = cpu_flow(8, work_n, max_workers=2, executor=pool)
        checked(procs)
        cases = {"threads": lambda: checked(threads), "process": lambda: checked(procs),
                 "raw": lambda: list(pool.map(spin, [work_n] * 8))}
        if client is not None:
            dask = cpu_flow(8, work_n, max_workers=2, executor=client)
            checked(dask)
            cases["dask"] = lambda: checked(dask)
        t = interleaved(runs, cases)
    rows.append(("cpu for_each 8 x 0.3 s: threads / ProcessPoolExecutor(2) (speedup)",
                 t["threads"], t["process"], t["threads"] / t["process"], ">= 1.7",
                 t["threads"] / t["process"] >= 1.7))
    rows.append(("cpu for_each 8 x 0.3 s on ProcessPoolExecutor(2) / raw pool.map",
                 t["process"], t["raw"], t["process"] / t["raw"], "", None))
    if client is not None:
        rows.append(("cpu for_each 8 x 0.3 s: threads / Dask 2 workers x 1 thread (speedup)",
                     t["threads"], t["dask"], t["threads"] / t["dask"], ">= 1.6",
                     t["threads"] / t["dask"] >= 1.6))


def bench_dask(rows, runs, client):
    width, length = 400, 100

    def raw_wide():
        root = client.submit(noop, pure=False)
        mids = [client.submit(noop, root, pure=False) for _ in range(width)]
        client.submit(noop, *mids, pure=False).result()

    def raw_wide_gathered():
        # the same graph, every value brought back to the client as flowing does
        root = client.submit(noop, pure=False).result()
        mids = client.gather([client.submit(noop, root, pure=False) for _ in range(width)])
        client.submit(noop, *mids, pure=False).result()

    def raw_chain_handoff():
        value = None
        for _ in range(length):
            value = client.submit(noop, value, pure=False).result()

    def raw_chain_futures():
        f = client.submit(noop, pure=False)
        for _ in range(length - 1):
            f = client.submit(noop, f, pure=False)
        f.result()

    # Both settings and both baselines interleaved in one set of runs: the cluster's
    # state (what its scheduler learnt of each kind of task) moves the raw baseline
    # by up to 1.6x from one block of runs to the next.
    widths = (64, 400)
    cases = {}
    for mw in widths:
        wide = wide_flow(width, executor=client, max_workers=mw)
        checked(wide)
        cases[mw] = lambda wide=wide: checked(wide)
    raw_wide()
    raw_wide_gathered()
    t = interleaved(runs, {**cases, "raw": raw_wide, "gathered": raw_wide_gathered})
    n = width + 2
    for mw in widths:
        ratio = t[mw] / t["raw"]
        rows.append((f"dask wide root->{width}->sink, per task (max_workers={mw}) / raw "
                     f"futures as arguments", t[mw] / n, t["raw"] / n, ratio, "<= 1.3",
                     ratio <= 1.3))
        rows.append((f"dask wide root->{width}->sink, per task (max_workers={mw}) / raw, "
                     f"values gathered to the client", t[mw] / n, t["gathered"] / n,
                     t[mw] / t["gathered"], "", None))
    # The wide graph journaled (a first run, into a fresh journal each time): its
    # small values come back to be written in their lines.
    folder = tempfile.mkdtemp(prefix="flowing-bench-")
    count = iter(range(10**6))

    def journaled():
        path = os.path.join(folder, f"wide{next(count)}.jsonl")
        checked(wide_flow(width, executor=client, max_workers=64, journal_path=path))

    try:
        journaled()
        t = interleaved(runs, {"flowing": journaled, "raw": raw_wide})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows.append((f"dask wide root->{width}->sink, journaled (first run, max_workers=64) / raw "
                 f"futures as arguments", t["flowing"] / (width + 2), t["raw"] / (width + 2),
                 t["flowing"] / t["raw"], "", None))
    chain = chain_flow(length, executor=client)
    checked(chain)
    t = interleaved(runs, {"flowing": lambda: checked(chain), "handoff": raw_chain_handoff,
                           "futures": raw_chain_futures})
    rows.append((f"dask chain of {length}, per task / raw hand-off (submit, wait, next)",
                 t["flowing"] / length, t["handoff"] / length, t["flowing"] / t["handoff"],
                 "", None))
    rows.append((f"dask chain of {length}, per task / raw chained futures (one submit each)",
                 t["flowing"] / length, t["futures"] / length, t["flowing"] / t["futures"],
                 "", None))


MB = 1 << 20


def big_load():
    return b"x" * (200 * MB)


def big_size(big_load):
    return len(big_load)


def big_sink(big_size):
    return big_size


def bench_big(rows, runs, client):
    load = task(big_load, name="big_load")
    size = task(big_size, name="big_size", depends_on=[load])
    sink = task(big_sink, name="big_sink", depends_on=[size])
    flow = Flow(sink, executor=client, log=False)

    def flowing():
        assert flow.run()["big_sink"].value == 200 * MB

    def raw():
        f = client.submit(big_load, pure=False)
        f = client.submit(big_size, f, pure=False)
        assert client.submit(big_sink, f, pure=False).result() == 200 * MB

    flowing()
    raw()
    t = interleaved(runs, {"flowing": flowing, "raw": raw})
    ratio = t["flowing"] / t["raw"]
    rows.append(("dask 200 MB value load->size->sink / raw futures as arguments",
                 t["flowing"], t["raw"], ratio, "<= 1.3", ratio <= 1.3))

    # The same chain journaled (a first run, into a fresh journal each time): the
    # value's digest and pickle are made on its worker and written here as they
    # come; the raw baseline fetches the value and writes it to a file, fsynced.
    folder = tempfile.mkdtemp(prefix="flowing-bench-")
    count = iter(range(10**6))

    def journaled():
        path = os.path.join(folder, f"run{next(count)}.jsonl")
        r = Flow(sink, executor=client, log=False, journal_path=path).run()
        assert r["big_sink"].value == 200 * MB and not r["big_load"].value_loaded

    def raw_written():
        f = client.submit(big_load, pure=False)
        g = client.submit(big_size, f, pure=False)
        s = client.submit(big_sink, g, pure=False)
        with open(os.path.join(folder, f"raw{next(count)}"), "wb") as out:
            out.write(f.result())
            out.flush()
            os.fsync(out.fileno())
        assert s.result() == 200 * MB

    try:
        journaled()
        raw_written()
        t = interleaved(runs, {"flowing": journaled, "raw": raw_written})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows.append(("the same, journaled (first run) / raw chain + fetch + write and fsync",
                 t["flowing"], t["raw"], t["flowing"] / t["raw"], "", None))


def bench_process(rows, runs):
    from concurrent.futures import ProcessPoolExecutor

    width, length = 400, 100
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(noop, range(4)))

        def raw_wide():
            futures = [pool.submit(noop) for _ in range(width + 2)]
            for f in futures:
                f.result()

        def raw_chunked():
            # the pool's own batching: what flowing's batching of quick bodies resembles
            list(pool.map(noop, range(width + 2), chunksize=16))

        def raw_handoff():
            value = None
            for _ in range(length):
                value = pool.submit(noop, value).result()

        for mw in (2, 8):
            wide = wide_flow(width, executor=pool, max_workers=mw)
            checked(wide)
            t = interleaved(runs, {"flowing": lambda wide=wide: checked(wide), "raw": raw_wide,
                                   "chunked": raw_chunked})
            n = width + 2
            ratio = t["flowing"] / t["raw"]
            rows.append((f"process pool wide root->{width}->sink, per task (max_workers={mw}) "
                         f"/ raw submit all + result", t["flowing"] / n, t["raw"] / n, ratio,
                         "<= 1.3", ratio <= 1.3))
            rows.append((f"process pool wide root->{width}->sink, per task (max_workers={mw}) "
                         f"/ raw pool.map(chunksize=16)", t["flowing"] / n, t["chunked"] / n,
                         t["flowing"] / t["chunked"], "", None))
        chain = chain_flow(length, executor=pool)
        checked(chain)
        t = interleaved(runs, {"flowing": lambda: checked(chain), "raw": raw_handoff})
        ratio = t["flowing"] / t["raw"]
        rows.append((f"process pool chain of {length}, per task / raw submit + result",
                     t["flowing"] / length, t["raw"] / length, ratio, "<= 1.3", ratio <= 1.3))


def fmt(seconds):
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def main():
    quick = "--quick" in sys.argv
    runs = 3 if quick else 5
    only = {"cpu", "dask", "big", "process"}
    if "--only" in sys.argv:
        only = set(sys.argv[sys.argv.index("--only") + 1].split(","))
    work_n = calibrate()
    rows = []
    client = cluster = None
    try:
        if not only & {"cpu", "dask", "big"}:
            raise ImportError
        import distributed

        cluster = distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                           dashboard_address=":0")
        client = distributed.Client(cluster)
        client.wait_for_workers(2, timeout=60)
    except ImportError:
        print("distributed is not installed: the Dask rows are skipped", file=sys.stderr)
    try:
        if "cpu" in only:
            bench_cpu(rows, runs, work_n, client)
        if "dask" in only and client is not None:
            bench_dask(rows, runs, client)
        if "big" in only and client is not None:
            bench_big(rows, runs, client)
        if "process" in only:
            bench_process(rows, runs)
    finally:
        if client is not None:
            client.close()
            cluster.close()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n`python3 {' '.join(sys.argv)}` (medians of {runs} runs; {os.cpu_count()} cores, "
          f"load average {load:.1f}; Python {sys.version.split()[0]}; "
          f"start method {multiprocessing.get_start_method()})\n")
    print("| case | flowing | raw / baseline | ratio | target | |")
    print("|---|---|---|---|---|---|")
    for name, a, b, ratio, target, ok in rows:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        print(f"| {name} | {fmt(a)} | {fmt(b)} | {ratio:.2f} | {target} | {verdict} |")


if __name__ == "__main__":
    main()
