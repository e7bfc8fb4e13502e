"""Append entries until killed, acknowledging each durable one (used by the fault tests).

usage: acker.py PATH TAG MAX_VALUE_BYTES THREADS

THREADS threads of this process share one Journal; thread n writes entries
"TAG.n.i" for i = 0, 1, ... Each entry's key, value, digest and inputs are a
pure function of its name (see ``expected``), so a reader can check every
entry it finds. After ``record`` returns True the line "ok NAME" is printed
and flushed: that entry must survive anything short of a disk failure.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from flowing.journal.store import Journal  # noqa: E402
from flowing.keys.digest import value_digest  # noqa: E402


def expected(name: str, max_bytes: int) -> tuple[str, Any, str, str | None]:
    """(key, value, digest, inputs) of the entry called ``name``."""
    h = hashlib.sha256(name.encode()).hexdigest()
    n = int(h[:8], 16)
    pad = "x" * (n % max_bytes)
    value: Any = {"name": name, "pad": pad} if n % 3 else (name, pad)  # JSON or pickle
    digest = value_digest(value)  # a value read back is checked against it
    inputs = None if n % 5 == 0 else hashlib.sha256(("inputs:" + name).encode()).hexdigest()
    return h, value, digest, inputs


def main() -> int:
    path, tag, max_bytes, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    journal = Journal.open(path, logging.getLogger("acker"))
    out_lock = threading.Lock()

    def work(n: int) -> None:
        i = 0
        while True:
            name = f"{tag}.{n}.{i}"
            key, value, digest, inputs = expected(name, max_bytes)
            prev = [expected(f"{tag}.{n}.{i - 1}", 1)[0]] if i else []
            if not journal.record(key, name, prev, value, digest=digest, inputs=inputs):
                os._exit(3)
            with out_lock:
                sys.stdout.write(f"ok {name}\n")
                sys.stdout.flush()
            i += 1

    print("started", flush=True)
    ts = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
