"""Batching with flowing: fetch many items from a flaky HTTP service.

Run it:  python3 examples/batch_http.py

What it shows
-------------
* ``for_each="ids"`` runs ``fetch`` once per id, in parallel.
* ``limit=Limit(max_concurrency=4, rate="20/s")`` keeps us polite to the
  service: at most 4 requests in flight and 20 started per second.
* ``retry=3`` retries each item on its own. When the server answers
  ``503 Service Unavailable`` with a ``Retry-After`` header, the exception we
  raise carries ``retry_after`` and flowing waits at least that long before
  the next attempt of that item.
* One id keeps failing with ``500``: the ``fetch`` task ends FAILED, but every
  other item ran and succeeded; ``StepResult.items`` tells which item failed.
* After the server is "fixed", ``flow.resume()`` fetches only the failed item
  again (the server's hit counter proves it) and the flow completes.

Everything is standard library: a ``ThreadingHTTPServer`` on 127.0.0.1 (port
chosen by the OS) in a daemon thread plays the remote service.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowing import Flow, Limit, StepState, task  # noqa: E402

# ----- the "remote" service ----------------------------------------------------

N_ITEMS = 12
FLAKY = {2, 5, 9}   # answer 503 + Retry-After on the first hit, then succeed
BROKEN = 7          # answers 500 until the service is fixed

hits: dict[int, int] = {}          # requests received per id
hits_lock = threading.Lock()
service = {"fixed": False}


class ItemHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "item" or not parts[1].isdigit():
            self._send(404, {"error": "not found"})
            return
        n = int(parts[1])
        with hits_lock:
            hits[n] = hits.get(n, 0) + 1
            count = hits[n]
        if n in FLAKY and count == 1:
            self._send(503, {"error": "busy, come back later"}, {"Retry-After": "1"})
        elif n == BROKEN and not service["fixed"]:
            self._send(500, {"error": "internal error"})
        else:
            self._send(200, {"id": n, "square": n * n})

    def _send(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):  # keep the example's output readable
        pass


def start_server() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ItemHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


# ----- the client ------------------------------------------------------------------

class HTTPStatusError(Exception):
    """A non-2xx answer. ``retry_after`` (seconds) tells flowing how long to wait."""

    def __init__(self, status: int, url: str, retry_after: float | None = None):
        super().__init__(f"HTTP {status} from {url}")
        self.status = status
        self.retry_after = retry_after


def get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        header = exc.headers.get("Retry-After")
        retry_after = float(header) if header and header.strip().isdigit() else None
        exc.close()
        raise HTTPStatusError(exc.code, url, retry_after) from None


# ----- the flow --------------------------------------------------------------------

BASE_URL = start_server()
api = Limit(max_concurrency=4, rate="20/s")


@task
def ids():
    return list(range(N_ITEMS))


@task(depends_on=[ids], for_each="ids", retry=3, retry_backoff_base_ms=50,
      retry_max_backoff_ms=200, timeout_s=10, limit=api)
def fetch(ids):
    # ``ids`` is ONE id here: the body runs once per item of the ``ids`` list.
    return get_json(f"{BASE_URL}/item/{ids}")


@task(depends_on=[fetch])
def summarise(fetch):
    return {"items": len(fetch), "sum_of_squares": sum(r["square"] for r in fetch)}


def show_hits(title: str) -> dict[int, int]:
    with hits_lock:
        snapshot = dict(sorted(hits.items()))
    print(f"{title}: " + ", ".join(f"{n}:{c}" for n, c in snapshot.items()))
    return snapshot


def fetched_ids(flow) -> list:
    return flow.results["ids"].value


def main() -> int:
    flow = Flow(summarise, log=False)

    print("== run ==")
    flow.run()
    print(flow.summary())
    fetched = flow.results["fetch"]
    failed = [r for r in fetched.items if r.state is not StepState.SUCCEEDED]
    for r in failed:
        print(f"failed item: index={r.index} id={fetched_ids(flow)[r.index]} "
              f"attempts={r.attempts} error={type(r.error).__name__}: {r.error}")
    flaky_attempts = {n: fetched.items[n].attempts for n in sorted(FLAKY)}
    print("flaky items succeeded after a retry (attempts): "
          + ", ".join(f"{n}:{a}" for n, a in flaky_attempts.items()))
    before = show_hits("server hits per id after run")

    print()
    print("== service fixed; resume() ==")
    service["fixed"] = True
    flow.resume()
    print(flow.summary())
    after = show_hits("server hits per id after resume")
    refetched = sorted(n for n in after if after[n] != before.get(n, 0))
    print(f"re-fetched on resume: {refetched}")
    print(f"result: {flow.value(summarise)}")
    if not flow.ok:
        print("flow did not complete", file=sys.stderr)
        return 1
    return 0



if __name__ == "__main__":
    sys.exit(main())
