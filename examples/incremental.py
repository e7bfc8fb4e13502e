"""Process only what changed: a folder of CSVs, one step per file, a report.

    python3 examples/incremental.py            # a demo: four runs over a fresh folder
    python3 examples/incremental.py FOLDER     # one run over FOLDER (journal inside it)

The pattern: a ``cache=False`` step reads the outside world (it lists the
folder, with a content digest per file) and runs every time; a ``for_each``
step handles each file; items are journaled under their *content*, so a run
re-parses only new or changed files, and the report re-runs only when the
parsed values changed (early cutoff). Editing a step so that it returns the
same values (its docstring, a refactor) re-runs only that step: no
``version=`` pin is needed. The demo runs four times, each in a fresh
process, and prints what ran::

    run 1 (first):           ran listing, parse x3, report
    run 2 (nothing changed): ran listing
    run 3 (a new file):      ran listing, parse x1, report   (a0.csv sorts first)
    run 4 (a changed file):  ran listing, parse x1, report
"""

import csv
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from flowing import Flow, task  # noqa: E402


@task(cache=False)                       # reads the outside world: runs every time
def listing(folder):
    """(name, content digest) of every CSV: a changed file is a new item."""
    return [(p.name, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(pathlib.Path(folder).glob("*.csv"))]


@task(depends_on=[listing], for_each="listing")
def parse(listing, folder):
    name, _digest = listing
    with open(pathlib.Path(folder) / name, newline="") as f:
        rows = list(csv.DictReader(f))
    return {"file": name, "rows": len(rows), "total": sum(float(r["amount"]) for r in rows)}


@task(depends_on=[parse])
def report(parse):
    return {"files": len(parse), "rows": sum(p["rows"] for p in parse),
            "total": round(sum(p["total"] for p in parse), 2)}


def run_once(folder: str) -> None:
    flow = Flow(report, inputs={"folder": folder},
                journal_path=os.path.join(folder, ".flowing.jsonl"), log=False)
    flow.run()
    print(flow.summary())
    ran = []
    for name, r in flow.results.items():
        if r.items is not None:
            fresh = sum(1 for it in r.items if not it.cached)
            if fresh:
                ran.append(f"{name} x{fresh}")
        elif not r.cached:
            ran.append(name)
    print("RAN " + ", ".join(ran))
    print("REPORT", flow.value(report) if flow.ok else "failed")
    sys.exit(0 if flow.ok else 1)


def write(folder: pathlib.Path, name: str, amounts: list[float]) -> None:
    lines = ["id,amount"] + [f"{i},{a}" for i, a in enumerate(amounts)]
    (folder / name).write_text("\n".join(lines) + "\n")


def demo() -> None:
    folder = pathlib.Path(tempfile.mkdtemp(prefix="flowing-incremental-"))
    write(folder, "b.csv", [1, 2])
    write(folder, "c.csv", [3])
    write(folder, "d.csv", [4, 5, 6])
    steps = [("first", None),
             ("nothing changed", None),
             ("a new file", lambda: write(folder, "a0.csv", [10])),
             ("a changed file", lambda: write(folder, "c.csv", [3, 30]))]
    try:
        for n, (what, change) in enumerate(steps, 1):
            if change is not None:
                change()
            out = subprocess.run([sys.executable, __file__, str(folder)], capture_output=True,
                                 text=True, check=True).stdout
            ran = next(line[4:] for line in out.splitlines() if line.startswith("RAN "))
            result = next(line[7:] for line in out.splitlines() if line.startswith("REPORT "))
            print(f"run {n} ({what}):".ljust(26) + f"ran {ran or 'nothing'}  -> {result}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        run_once(sys.argv[1])
    else:
        demo()
