"""Run a journaled Flow of N independent tasks plus a chain a -> b -> c (used by the fault tests).

usage: flow_child.py JOURNAL LOG N

Each body appends "end NAME" to LOG just before it returns, so a test knows
which bodies finished. Prints one line "RESULT {json}": per task its state,
whether it was replayed, and whether its value is the expected one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from flowing import Flow, task  # noqa: E402

JOURNAL, LOG, N = sys.argv[1], sys.argv[2], int(sys.argv[3])


def done(name: str) -> None:
    with open(LOG, "a") as f:
        f.write(f"end {name}\n")


def expected(i: int) -> dict[str, Any]:
    return {"i": i, "sq": i * i, "pad": "p" * (i * 7919 % 30000)}


def leaf(i: int) -> Any:
    def body() -> dict[str, Any]:
        time.sleep(0.001 * (i % 4))
        done(f"t{i}")
        return expected(i)
    return task(body, name=f"t{i}")


@task
def a() -> list[int]:
    done("a")
    return [1, 2, 3]


@task(depends_on=[a])
def b(a: list[int]) -> tuple[int, ...]:
    done("b")
    return tuple(x * 10 for x in a)   # pickled


@task(depends_on=[b])
def c(b: tuple[int, ...]) -> int:
    done("c")
    return sum(b)


WANT: dict[str, Any] = {f"t{i}": expected(i) for i in range(N)}
WANT.update(a=[1, 2, 3], b=(10, 20, 30), c=60)

if __name__ == "__main__":
    leaves = [leaf(i) for i in range(N)]
    results = Flow(*leaves, c, max_workers=4, journal_path=JOURNAL, log=False).run()
    out = {name: {"state": str(getattr(r.state, "value", r.state)), "cached": bool(r.cached),
                  "ok": r.value == WANT[name]}
           for name, r in results.items()}
    print("RESULT " + json.dumps(out), flush=True)
