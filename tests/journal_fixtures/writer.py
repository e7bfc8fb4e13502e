"""Append entries to a journal from a separate process (used by the journal tests).

usage: writer.py PATH TAG COUNT MAX_VALUE_BYTES [--forever]

Entry i has key sha256("TAG-i"), name "TAG.i" and a value whose size varies
from a few bytes to MAX_VALUE_BYTES; every third value is a tuple (pickled).
With --forever, COUNT is ignored and the loop runs until the process is killed.
"""

import hashlib
import logging
import sys

from flowing.journal.store import Journal


def key(tag: str, i: int) -> str:
    return hashlib.sha256(f"{tag}-{i}".encode()).hexdigest()


def value(tag: str, i: int, max_bytes: int):
    pad = "x" * ((i * 7919) % max_bytes)
    if i % 3 == 2:
        return (tag, i, pad)
    return {"tag": tag, "i": i, "pad": pad}


def main() -> int:
    path, tag, count, max_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    forever = "--forever" in sys.argv[5:]
    logging.basicConfig(level=logging.WARNING)
    journal = Journal.open(path, logging.getLogger("writer"))
    i = 0
    while forever or i < count:
        if not journal.record(key(tag, i), f"{tag}.{i}", [key(tag, i - 1)] if i else [],
                              value(tag, i, max_bytes)):
            return 1
        i += 1
        if i == 1:
            print("started", flush=True)
    journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
