"""What the journal costs on real data: arrays, frames, many items, big journals.

Prints one markdown table. Every case runs in a fresh subprocess (this script
re-invoked with ``--child``). Two times per case: the wall time of the whole
process (interpreter start, imports and exit included, measured by the
parent) and, for the pipelines, the in-process time from just before the
first pipeline / flowing / joblib call to the summary in hand (every import
done before the clock starts, on every side alike); then peak RSS
(``ru_maxrss``). Each figure is the median of ``--repeat`` runs, and each
ratio is taken between figures of the same invocation.

Cases (``--only`` takes a comma-separated subset of: array, frame, items, open):

- array / frame: a load -> transform -> summarize pipeline over a 200 MB
  float64 array / a 1M-row x 10-column DataFrame, as plain calls, as a
  journaled flowing run (first run, fresh journal), replayed in a fresh
  process (same journal), and with ``joblib.Memory`` (first run, re-run).
- items: 100k ``for_each`` items with small values, unjournaled vs journaled
  (first run), and the nothing-changed journaled re-run in a fresh process.
- open: building a one-task ``Flow`` on a journal of 1M small entries.

``--quick``: small sizes and one repeat (seconds). Needs numpy, pandas and
joblib (the ``test`` extra); flowing itself is taken from this checkout.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------- pipelines


def _array_pipeline(n: int) -> tuple[Any, Any, Any]:
    import numpy as np

    def load() -> Any:
        return np.random.default_rng(0).random(n)

    def transform(load: Any) -> Any:
        return np.sqrt(load) * 2.0 + 1.0

    def summarize(transform: Any) -> dict[str, float]:
        return {"mean": float(transform.mean()), "max": float(transform.max())}

    return load, transform, summarize


def _frame_pipeline(n: int) -> tuple[Any, Any, Any]:
    import numpy as np
    import pandas as pd

    def load() -> Any:
        rng = np.random.default_rng(0)
        cols: dict[str, Any] = {f"f{i}": rng.random(n) for i in range(8)}
        cols["k"] = rng.integers(0, 100, n)
        cols["s"] = pd.Categorical(rng.integers(0, 10, n).astype(str))
        return pd.DataFrame(cols)

    def transform(load: Any) -> Any:
        out = load.copy()
        out["f0"] = out["f0"] * 2 + out["f1"]
        return out[out["f2"] > 0.1]

    def summarize(transform: Any) -> dict[str, float]:
        return {k: float(v) for k, v in transform.groupby("k")["f0"].mean().head(5).items()}

    return load, transform, summarize


def _pipeline(case: str, quick: bool) -> tuple[Any, Any, Any]:
    if case == "array":
        return _array_pipeline(2_500_000 if quick else 25_000_000)  # 20 MB / 200 MB
    return _frame_pipeline(100_000 if quick else 1_000_000)


def _child_pipeline(case: str, mode: str, work: str, quick: bool) -> float:
    """Run one pipeline; returns the in-process time of the pipeline alone.

    Every import (numpy, pandas, flowing, joblib) happens before the clock
    starts, on every side alike: the figure runs from just before the first
    call into the pipeline (plain), ``task()`` (flowing) or ``Memory()``
    (joblib) to the summary in hand.
    """
    load, transform, summarize = _pipeline(case, quick)
    journal = os.path.join(work, "run.jsonl")
    if mode.startswith("flowing"):
        from flowing import Flow, task
    elif mode.startswith("joblib"):
        import joblib
    t0 = time.perf_counter()
    if mode == "plain":
        out = summarize(transform(load()))
    elif mode.startswith("flowing"):
        tl = task(load)
        tt = task(transform, depends_on=[tl])
        ts = task(summarize, depends_on=[tt])
        out = Flow(ts, journal_path=journal, log=False).run()["summarize"].value
    else:
        mem = joblib.Memory(os.path.join(work, "joblib"), verbose=0)
        cl, ct, cs = mem.cache(load), mem.cache(transform), mem.cache(summarize)
        out = cs(ct(cl()))
    took = time.perf_counter() - t0
    assert out
    return took


def _child_items(mode: str, work: str, quick: bool) -> None:
    from flowing import Flow, task

    n = 10_000 if quick else 100_000

    @task
    def src() -> list[int]:
        return list(range(n))

    @task(depends_on=[src], for_each="src")
    def sq(src: int) -> dict[str, int]:
        return {"i": src, "sq": src * src}

    journal = None if mode == "plain" else os.path.join(work, "items.jsonl")
    r = Flow(sq, journal_path=journal, log=False).run()["sq"]
    assert r.ok and len(r.value) == n


def _child_open(work: str, quick: bool) -> None:
    from flowing import Flow, task

    @task
    def one() -> int:
        return 1

    Flow(one, journal_path=os.path.join(work, "big.jsonl"), log=False)


def _make_big_journal(path: str, n: int) -> None:
    """A journal of ``n`` small task entries, written directly (fast)."""
    import hashlib

    sys.path.insert(0, ROOT)
    from flowing.journal.format import HEADER, _make_line

    t = time.time()
    with open(path, "wb") as f:
        f.write(HEADER)
        buf = []
        for i in range(n):
            key = hashlib.sha256(b"%d" % i).hexdigest()
            buf.append(_make_line(key, "task", f"t{i % 1000}", [], t, "json", str(i)))
            if len(buf) >= 10_000:
                f.write(b"".join(buf))
                buf.clear()
        f.write(b"".join(buf))
    os.chmod(path, 0o600)


def child(argv: list[str]) -> None:
    what, mode, work, quick = argv[0], argv[1], argv[2], argv[3] == "1"
    pipe = 0.0
    if what in ("array", "frame"):
        pipe = _child_pipeline(what, mode, work, quick)
    elif what == "items":
        _child_items(mode, work, quick)
    else:
        _child_open(work, quick)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    print("RESULT " + json.dumps({"pipe": pipe, "rss": rss}), flush=True)


# ------------------------------------------------------------------- parent


# Children compile each module once into this folder and reuse the bytecode, as a
# user's installation does (``PYTHONDONTWRITEBYTECODE`` in the caller's environment
# would make every child compile flowing, numpy and pandas from source again).
_PYCACHE = os.path.join(tempfile.gettempdir(), f"flowing-bench-pycache-{os.getpid()}")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = _PYCACHE
    return env


def _warm_bytecode() -> None:
    """Compile what the children import, before anything is timed."""
    code = ("import flowing, flowing.flow, flowing.journal.store, flowing.keys.stepkey, "
            "flowing.engine.scheduler, flowing.runners.local, flowing.replay.replayer\n"
            "for m in ('numpy', 'pandas', 'joblib'):\n"
            "    try:\n        __import__(m)\n    except ImportError:\n        pass\n")
    subprocess.run([sys.executable, "-c", code], env=_child_env(), check=True, timeout=600)


def _run_child(what: str, mode: str, work: str, quick: bool) -> dict[str, float]:
    env = _child_env()
    t0 = time.perf_counter()  # the whole process: interpreter start, imports, exit
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", what, mode, work,
                        "1" if quick else "0"], capture_output=True, text=True, env=env,
                       timeout=1800)
    wall = time.perf_counter() - t0
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"{what}/{mode} failed:\n{p.stdout}\n{p.stderr}")
    out: dict[str, float] = json.loads(line[len("RESULT "):])
    out["wall"] = wall
    return out


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in ("wall", "pipe", "rss")}


def _fresh(work: str) -> None:
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)


def bench_pipeline(case: str, repeat: int, quick: bool) -> list[str]:
    modes = ["plain", "flowing-first", "flowing-replay", "joblib-first", "joblib-rerun"]
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    base = tempfile.mkdtemp(prefix="flowing-bench-")
    try:
        for _ in range(repeat):
            work = os.path.join(base, "w")
            _fresh(work)
            for m in modes:  # first runs write what the re-runs read
                runs[m].append(_run_child(case, m, work, quick))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {m: _median(r) for m, r in runs.items()}
    plain = med["plain"]
    size = ("20 MB array" if quick else "200 MB array") if case == "array" else (
        "100k-row frame" if quick else "1M-row x 10-col frame")
    rows = []
    for m in modes:
        w, q, r = med[m]["wall"], med[m]["pipe"], med[m]["rss"]
        rows.append(f"| {size} | {m} | {w:.2f} s | {w / plain['wall']:.2f}x | {q:.3f} s | "
                    f"{q / plain['pipe']:.2f}x | {r:.0f} MB | {r / plain['rss']:.2f}x |")
    first, replay = med["flowing-first"], med["flowing-replay"]
    rows.append(f"| {size} | targets (in-process) | | | first {first['pipe']:.3f} s <= joblib "
                f"first {med['joblib-first']['pipe']:.3f} s; replay {replay['pipe']:.3f} s <= "
                f"joblib re-run {med['joblib-rerun']['pipe']:.3f} s and <= 0.25x plain | | first "
                f"RSS <= 1.6x plain, replay <= 0.6x | |")
    return rows


def bench_items(repeat: int, quick: bool) -> list[str]:
    n = 10_000 if quick else 100_000
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "journaled": [], "re-run": []}
    base = tempfile.mkdtemp(prefix="flowing-bench-")
    try:
        for _ in range(repeat):
            work = os.path.join(base, "w")
            _fresh(work)
            runs["plain"].append(_run_child("items", "plain", work, quick))
            runs["journaled"].append(_run_child("items", "journal", work, quick))
            runs["re-run"].append(_run_child("items", "journal", work, quick))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {m: _median(r) for m, r in runs.items()}
    plain = med["plain"]["wall"]
    return [f"| {n // 1000}k items | {m} | {med[m]['wall']:.2f} s "
            f"({med[m]['wall'] / n * 1e6:.0f} µs/item) | {med[m]['wall'] / plain:.2f}x | | | "
            f"{med[m]['rss']:.0f} MB | |" for m in runs] + [
        f"| {n // 1000}k items | targets | journaled <= 3x plain; re-run <= 0.5x plain | | | | "
        f"| |"]


def bench_open(repeat: int, quick: bool) -> list[str]:
    n = 100_000 if quick else 1_000_000
    base = tempfile.mkdtemp(prefix="flowing-bench-")
    try:
        _make_big_journal(os.path.join(base, "big.jsonl"), n)
        first = _run_child("open", "flow", base, quick)  # scans it all, builds the index
        med = _median([_run_child("open", "flow", base, quick) for _ in range(repeat)])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return [f"| journal of {n // 1000}k entries | build a one-task Flow, first open (index "
            f"built) | {first['wall']:.2f} s | | | | {first['rss']:.0f} MB | |",
            f"| journal of {n // 1000}k entries | build a one-task Flow (indexed) | "
            f"{med['wall']:.2f} s | | | | {med['rss']:.0f} MB | target < 1 s and < 100 MB |"]


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    p.add_argument("--repeat", type=int, default=None, help="runs per case (default 3; quick 1)")
    p.add_argument("--only", default="array,frame,items,open")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a.child)
        return 0
    repeat = a.repeat or (1 if a.quick else 3)
    only = set(a.only.split(","))
    try:
        _warm_bytecode()
        return _bench(only, repeat, a.quick)
    finally:
        shutil.rmtree(_PYCACHE, ignore_errors=True)


def _bench(only: set[str], repeat: int, quick: bool) -> int:
    print("| case | mode | wall (process) | vs plain | in-process | vs plain | peak RSS | "
          "vs plain |")
    print("|---|---|---|---|---|---|---|---|")
    for case in ("array", "frame"):
        if case in only:
            for row in bench_pipeline(case, repeat, quick):
                print(row, flush=True)
    if "items" in only:
        for row in bench_items(repeat, quick):
            print(row, flush=True)
    if "open" in only:
        for row in bench_open(repeat, quick):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
