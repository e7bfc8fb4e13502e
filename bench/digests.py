#!/usr/bin/env python3
"""What content digests cost (``flowing.keys.digest.value_digest``), beside the
obvious baseline for each kind of value.

    python3 bench/digests.py            # full sizes (a few minutes, ~2.5 GB of memory)
    python3 bench/digests.py --quick    # small sizes, a few seconds

Cases (each run in a fresh subprocess, this script re-invoked with ``--child``;
figures are medians over the runs, ratios are computed per run and then their
median, so both sides of a ratio come from the same process):

  array    a 1 GB float64 array: value_digest vs hashlib.sha256 over its buffer;
           extra peak RSS of value_digest (target: time ratio <= 1.3, < 16 MB)
  dicts    1M small dicts {"id", "name", "score"}: value_digest vs
           sha256(pickle.dumps(v, 5)) (target ratio <= 2)
  frame    a 1M-row x 10-column DataFrame (8 float, 1 int, 1 str columns):
           value_digest vs sha256(pickle.dumps(df, 5)) (no target: for scale)
  side     2,000 journaled for_each items each reading a 10k-entry dict
           dependency, vs the same with a 1-entry dict: run() wall time
           (target ratio <= 1.5)

Needs numpy and pandas for ``array`` and ``frame`` (skipped without them).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TAG = "DIGEST-RESULT "


def _rss_mb() -> float:
    """Current resident set size (Linux: /proc; elsewhere psutil)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import psutil  # type: ignore[import-untyped]
        return float(psutil.Process().memory_info().rss) / 2**20


def _peak_mb() -> float:
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# ------------------------------------------------------------------ cases (children)

def case_array(quick: bool) -> dict[str, float]:
    import hashlib

    import numpy as np

    from flowing.keys.digest import value_digest

    a = np.arange((2 << 20) if quick else (128 << 20), dtype=np.float64)  # 16 MB / 1 GB
    base_first = os.environ.get("DIGEST_BENCH_RUN", "0") in ("1", "3", "5")
    if base_first:  # alternate which side reads the buffer first
        base, _ = _timed(lambda: hashlib.sha256(a).hexdigest())
    before = _rss_mb()
    ours, d = _timed(lambda: value_digest(a))
    extra = max(0.0, _peak_mb() - before)  # sha256 itself allocates nothing
    if not base_first:
        base, _ = _timed(lambda: hashlib.sha256(a).hexdigest())
    assert d is not None
    return {"ours_s": ours, "base_s": base, "ratio": ours / base, "extra_mb": extra,
            "mb": a.nbytes / 2**20}


def case_dicts(quick: bool) -> dict[str, float]:
    import hashlib
    import pickle

    from flowing.keys.digest import value_digest

    n = 50_000 if quick else 1_000_000
    v = [{"id": i, "name": f"n{i}", "score": i * 0.5} for i in range(n)]
    base, _ = _timed(lambda: hashlib.sha256(pickle.dumps(v, 5)).hexdigest())
    ours, d = _timed(lambda: value_digest(v))
    assert d is not None
    return {"ours_s": ours, "base_s": base, "ratio": ours / base, "n": n}


def case_frame(quick: bool) -> dict[str, float]:
    import hashlib
    import pickle

    import numpy as np
    import pandas as pd

    from flowing.keys.digest import value_digest

    n = 20_000 if quick else 1_000_000
    rng = np.random.default_rng(0)
    cols = {f"f{j}": rng.random(n) for j in range(8)}
    cols["i"] = np.arange(n)
    cols["s"] = [f"name {i}" for i in range(n)]
    df = pd.DataFrame(cols)
    before = _rss_mb()
    ours, d = _timed(lambda: value_digest(df))
    extra = max(0.0, _peak_mb() - before)  # before the baseline's own peak
    base, _ = _timed(lambda: hashlib.sha256(pickle.dumps(df, 5)).hexdigest())
    assert d is not None
    return {"ours_s": ours, "base_s": base, "ratio": ours / base, "extra_mb": extra, "rows": n}


def case_side(quick: bool) -> dict[str, float]:
    from flowing import Flow, task

    items = 200 if quick else 2000

    def build(entries: int):  # type: ignore[no-untyped-def]
        @task
        def table() -> dict[str, int]:
            return {f"key {i}": i for i in range(entries)}

        @task
        def keys() -> list[int]:
            return list(range(items))

        @task(depends_on=[keys, table], for_each="keys")
        def look(keys: int, table: dict[str, int]) -> int:
            return keys + len(table)

        return look

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for entries in (1, 10_000):
            journal = os.path.join(tmp, f"run{entries}.jsonl")
            flow = Flow(build(entries), journal_path=journal, log=False)
            t, _ = _timed(flow.run)
            out[f"t{entries}"] = t
    out["ratio"] = out["t10000"] / out["t1"]
    out["items"] = items
    return out


CASES = {"array": case_array, "dicts": case_dicts, "frame": case_frame, "side": case_side}
NEEDS = {"array": ("numpy",), "frame": ("numpy", "pandas")}


# ------------------------------------------------------------------ parent

def _child(name: str, quick: bool, run: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               DIGEST_BENCH_RUN=str(run))
    args = [sys.executable, os.path.abspath(__file__), "--child", name] + (["--quick"] if quick else [])
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"case {name} failed:\n{out.stderr}")
    line = next(x for x in out.stdout.splitlines() if x.startswith(TAG))
    return dict(json.loads(line[len(TAG):]))


def _available(name: str) -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in NEEDS.get(name, ()))


def main() -> int:
    quick = "--quick" in sys.argv
    if "--child" in sys.argv:
        name = sys.argv[sys.argv.index("--child") + 1]
        if REPO not in sys.path:
            sys.path.insert(0, REPO)
        print(TAG + json.dumps(CASES[name](quick)))
        return 0
    runs = 3 if quick else 5
    rows = []
    for name in CASES:
        if not _available(name):
            rows.append(f"| {name} | skipped (needs {', '.join(NEEDS[name])}) | | | | |")
            continue
        results = [_child(name, quick, run) for run in range(runs)]

        def med(key: str, results: list[dict[str, float]] = results) -> float:
            return statistics.median(r[key] for r in results)

        if name == "side":
            rows.append(f"| side input: {int(results[0]['items'])} journaled items, 10k-entry "
                        f"vs 1-entry dict | {med('t10000'):.3f} s | {med('t1'):.3f} s | "
                        f"{med('ratio'):.2f} | - | <= 1.5 |")
            continue
        if name == "array":
            label = f"{results[0]['mb']:.0f} MB float64 array vs sha256(buffer)"
        elif name == "dicts":
            label = f"{int(results[0]['n']):,} small dicts vs sha256(pickle.dumps)"
        else:
            label = f"{int(results[0]['rows']):,} x 10 DataFrame vs sha256(pickle.dumps)"
        target = {"array": "<= 1.3, < 16 MB", "dicts": "<= 2", "frame": "-"}[name]
        extra = f"{med('extra_mb'):.1f} MB" if "extra_mb" in results[0] else "-"
        rows.append(f"| {label} | {med('ours_s'):.3f} s | {med('base_s'):.3f} s | "
                    f"{med('ratio'):.2f} | {extra} | {target} |")
    print(f"digests ({'quick' if quick else 'full'}; medians of {runs} fresh processes)\n")
    print("| case | value_digest | baseline | ratio | extra peak RSS | target |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
