"""A small flow: three fetches in parallel, a flaky step that retries, a gate,
and a detached side-effect. Run it: python3 examples/quickstart.py"""

import itertools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowing import Flow, task  # noqa: E402


@task
def users():
    time.sleep(0.2)  # stands for an API call
    return ["ada", "grace", "linus"]


@task
def orders():
    time.sleep(0.3)
    return {"ada": 3, "grace": 5, "linus": 0}


calls = itertools.count(1)


@task(retry=3, retry_backoff_base_ms=50)
def prices():
    if next(calls) < 3:  # a flaky service: the first two calls fail
        raise ConnectionError("price service unavailable")
    return {"unit": 9.5}


@task(depends_on=[users, orders, prices])
def revenue(users, orders, prices):
    return {u: orders[u] * prices["unit"] for u in users}


@task(depends_on=[revenue], when=lambda revenue: sum(revenue.values()) > 0)
def report(revenue):
    top = max(revenue, key=revenue.get)
    return f"total {sum(revenue.values()):.2f}, top customer {top}"


@task(depends_on=[report], detached=True)
def notify(report):
    print(f"[notify] {report}")  # a side-effect: runs after the main graph


if __name__ == "__main__":
    flow = Flow(report)
    flow.run()
    print(flow.summary())
    print("report:", flow.value(report) if flow.ok else "not produced")
    sys.exit(0 if flow.ok else 1)
