#!/usr/bin/env python3
"""What step keys cost: ``Keyer`` over loop-built tasks, typical bodies, items.

    python3 bench/keys.py            # every case, median of 5 runs (about 30 s)
    python3 bench/keys.py --runs 3
    python3 bench/keys.py --before   # also the 0.1 keyer (from git, commit ac647f5), 100 tasks

Cases (each run in a fresh subprocess, so no cache survives from one run to
the next; only the keying is timed, not declaring the tasks):

  shared 10k      10,000 loop-built tasks (distinct closures, one per index)
                  whose bodies read one 200,000-element module-level list.
                  Target: all keys in < 1 s. The 0.1 keyer re-hashed the list
                  for every task (500 such tasks took 38 s).
  typical         2,000 loop-built tasks with a typical body: a closure over a
                  Path, a dataclass config and a compiled regex read as module
                  constants, two helper functions and a dict constant.
                  Figure: microseconds per task.
  same body       2,000 tasks sharing one function: microseconds per task.
  items           Keyer.item_key over 10,000 dict items: microseconds per item.
  digest 200k     digest.value_digest of the 200,000-element list, once.

The table gives the median over the runs and the spread (min-max). A MISS is
reported, never fatal.
"""

import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TAG = "KEYS-RESULT "

# --- the workloads (in the child) -----------------------------------------------------------

SETUP = '''
import dataclasses
import re
from pathlib import Path

from flowing import task

BIG = list(range(200_000))
PATTERN = re.compile(r"(?P<id>\\d+),(?P<name>[^,]*)")
UNITS = {"kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3}


@dataclasses.dataclass
class Config:
    root: Path
    retries: int = 3
    verbose: bool = False


CONFIG = Config(Path("/srv/data"))


def parse(line):
    m = PATTERN.match(line)
    return (int(m["id"]), m["name"]) if m else None


def size(text):
    number, unit = text[:-2], text[-2:]
    return float(number) * UNITS[unit]


def make_shared(i):
    def body():
        return BIG[i]
    return task(body, name=f"s{i}")


def make_typical(path):
    def load(upstream=None):
        rows = [parse(line) for line in (CONFIG.root / path).read_text().splitlines()]
        return {"rows": [r for r in rows if r], "size": size("10kb"), "src": str(path)}
    return task(load, name=f"load_{path.stem}")


def same_body(upstream=None):
    return parse("1,a")
'''


def _namespace():
    sys.path.insert(0, REPO)
    namespace = {"__name__": "bench_keys_workload"}
    exec(compile(SETUP, "<bench-keys>", "exec"), namespace)
    return namespace


def child(case, n):
    ns = _namespace()
    from flowing import task
    from flowing.keys.digest import value_digest
    from flowing.keys.stepkey import Keyer, Uncacheable

    if case == "shared":
        tasks = [ns["make_shared"](i) for i in range(n)]
    elif case == "typical":
        from pathlib import Path
        tasks = [ns["make_typical"](Path(f"part-{i}.csv")) for i in range(n)]
    elif case == "same":
        tasks = [task(ns["same_body"], name=f"t{i}") for i in range(n)]
    elif case == "items":
        keyer = Keyer()
        items = [{"id": i, "path": f"part-{i}.csv", "tags": ["a", "b"]} for i in range(n)]
        t0 = time.perf_counter()
        keys = [keyer.item_key("k" * 64, item) for item in items]
        dt = time.perf_counter() - t0
        assert None not in keys
        return {"seconds": dt, "count": n}
    elif case == "digest":
        t0 = time.perf_counter()
        assert value_digest(ns["BIG"]) is not None
        return {"seconds": time.perf_counter() - t0, "count": 1}
    elif case == "before":
        return _before(ns["make_shared"], n)
    else:
        raise SystemExit(f"unknown case {case}")
    keyer = Keyer()
    t0 = time.perf_counter()
    keys = [keyer.task_key(td, [], {}) for td in tasks]
    dt = time.perf_counter() - t0
    bad = [k for k in keys if isinstance(k, Uncacheable)]
    if bad:
        raise SystemExit(bad[0].message)
    return {"seconds": dt, "count": n}


def _before(make_shared, n):
    """The 0.1 keyer, loaded from git into memory (``flowing.stepkey_v1``)."""
    import types
    source = subprocess.run(["git", "-C", REPO, "show", "ac647f5:flowing/stepkey.py"],
                            capture_output=True, text=True, check=True).stdout
    module = types.ModuleType("flowing.stepkey_v1")
    module.__package__ = "flowing"
    exec(compile(source, "stepkey_v1.py", "exec"), module.__dict__)
    tasks = [make_shared(i) for i in range(n)]
    module.clear_cache()  # once, as a run of 0.1 did
    t0 = time.perf_counter()
    for td in tasks:
        module.compute_step_key(td, [])
    return {"seconds": time.perf_counter() - t0, "count": n}


# --- the driver --------------------------------------------------------------------------------

CASES = [
    # label, case, n, target (in unit), unit: "s" for the total, else per task or item
    ("10k loop-built tasks reading one 200k-element list", "shared", 10_000, 1.0, "s"),
    ("typical body, 2,000 loop-built tasks", "typical", 2_000, None, "µs/task"),
    ("one body shared by 2,000 tasks", "same", 2_000, None, "µs/task"),
    ("item_key, 10,000 dict items", "items", 10_000, None, "µs/item"),
    ("value_digest of the 200k-element list", "digest", 1, None, "s"),
]


def run_child(case, n):
    env = dict(os.environ, PYTHONHASHSEED="0")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", case, str(n)],
                       capture_output=True, text=True, timeout=900, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{p.stderr[-2000:]}")
    for line in p.stdout.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    raise RuntimeError(f"case {case}: no result in output:\n{p.stdout[-2000:]}")


def main(argv):
    if len(argv) > 1 and argv[1] == "--child":
        print(TAG + json.dumps(child(argv[2], int(argv[3]))))
        return 0
    runs = 5
    if "--runs" in argv:
        runs = int(argv[argv.index("--runs") + 1])
    cases = list(CASES)
    if "--before" in argv:
        cases.append(("0.1 keyer (commit ac647f5): 100 tasks reading the 200k list", "before",
                      100, None, "ms/task"))
    print(f"python {sys.version.split()[0]}, median of {runs} runs, each in a fresh process\n")
    print("| case | median | spread | target | |")
    print("|---|---|---|---|---|")
    for label, case, n, target, unit in cases:
        times = [run_child(case, n)["seconds"] for _ in range(runs if case != "before" else 1)]
        scale = {"s": 1.0, "µs/task": 1e6 / n, "µs/item": 1e6 / n, "ms/task": 1e3 / n}[unit]
        values = [t * scale for t in times]
        med = statistics.median(values)
        fmt = "{:.3f}" if unit == "s" else "{:.1f}"
        verdict = "" if target is None else ("PASS" if med < target else "MISS")
        target_text = "" if target is None else f"< {target:g} {unit}"
        print(f"| {label} | {fmt.format(med)} {unit} | {fmt.format(min(values))}-"
              f"{fmt.format(max(values))} | {target_text} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
