"""Run a small flow and draw its timeline.

    python3 examples/timeline.py              # writes ./timeline.svg
    python3 examples/timeline.py out/run.svg  # or wherever you say

Open the SVG in a browser: one row per task, one bar per attempt (the amber
bar is a failed attempt that was retried, the dashed line its backoff wait),
and the detached notification at the bottom, run after the main graph.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowing import Flow, task  # noqa: E402

calls = {"orders": 0}


@task
def load_config():
    time.sleep(0.05)
    return {"region": "eu", "currency": "EUR"}


@task(depends_on=[load_config])
def fetch_customers(load_config):
    time.sleep(0.35)
    return [{"id": i, "region": load_config["region"]} for i in range(6)]


@task(depends_on=[load_config], retry=2, retry_backoff_base_ms=250)
def fetch_orders(load_config):
    calls["orders"] += 1
    time.sleep(0.2)
    if calls["orders"] == 1:
        raise ConnectionError("orders API reset the connection")
    return [{"customer": i % 6, "total": 10.0 * i} for i in range(20)]


@task(depends_on=[load_config])
def fetch_rates(load_config):
    time.sleep(0.15)
    return {"EUR": 1.0, "USD": 1.08}


@task(depends_on=[fetch_customers], for_each="fetch_customers")
def score_customer(fetch_customers):
    time.sleep(0.08 + 0.03 * fetch_customers["id"])
    return {"id": fetch_customers["id"], "score": fetch_customers["id"] % 3}


@task(depends_on=[score_customer, fetch_orders, fetch_rates])
def build_report(score_customer, fetch_orders, fetch_rates):
    time.sleep(0.25)
    revenue = sum(o["total"] for o in fetch_orders) * fetch_rates["EUR"]
    return {"customers": len(score_customer), "revenue": revenue}


@task(depends_on=[build_report])
def publish(build_report):
    time.sleep(0.1)
    return f"published: {build_report['customers']} customers"


@task(depends_on=[publish], detached=True)
def notify_team(publish):
    time.sleep(0.12)
    return "sent"


def main(argv):
    out = argv[1] if len(argv) > 1 else "timeline.svg"
    flow = Flow(publish, max_workers=4)
    flow.run()
    print(flow.summary())
    print(f"timeline: {flow.timeline_svg(out)}")
    return 0 if flow.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
