"""Fault injection: the journal under kill -9, torn tails and damaged bytes, in real processes.

What must hold after every fault: re-opening the journal loses nothing that
``Journal.record`` returned True for (each writer prints "ok NAME" only after
that), and replays nothing unfinished (every entry found is exactly one that
a writer wrote whole: its key, value, digests and dependencies are checked
against the pure function that made them). The next writer carries on after
the damage, and a re-open then reports no damage left behind.

- kill -9 at random points of processes appending through ``Journal.record``
  (several threads, sometimes two processes at once, values up to a few MB so
  kills land mid-write, and kills during start-up, i.e. while the journal and
  its header are being created);
- kill -9 during ``compact`` while a writer appends: the path always names a
  whole journal, and the next open removes the rewrite's temporary file;
- kill -9 during ``Flow(..., journal_path=...).run()``: the re-run replays only
  bodies that finished and returns every correct value;
- truncation at every offset of the last line, of the header, and of a 0.1.0
  journal's first line;
- byte flips at every offset of a small journal (several masks), and random
  multi-byte splats.

Sized for CI (about 20-40 s on 2 cores). Set ``FLOWING_LONG_FAULTS=1`` for
many more trials (an environment variable rather than a ``--long`` pytest
option: the suite's conftest is shared, and this file stays self-contained).
``FLOWING_FAULT_SEED=N`` replays a run; every failure message names its seed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from flowing.errors import JournalError  # noqa: E402
from flowing.journal.format import HEADER  # noqa: E402
from flowing.journal.scan import iter_entries  # noqa: E402
from flowing.journal.store import Journal  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "journal_fixtures")
ACKER = os.path.join(FIXTURES, "acker.py")
FLOW_CHILD = os.path.join(FIXTURES, "flow_child.py")
sys.path.insert(0, FIXTURES)
from acker import expected  # noqa: E402

sys.path.remove(FIXTURES)

LONG = os.environ.get("FLOWING_LONG_FAULTS") == "1"
SEED = int(os.environ.get("FLOWING_FAULT_SEED") or random.randrange(1 << 30))
WAIT = 60  # seconds: the bound on every wait for a child


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.warnings.append(record.getMessage())


def logger() -> tuple[logging.Logger, Capture]:
    log = logging.getLogger(f"test_faults.{random.random()}")
    log.propagate = False
    cap = Capture()
    log.addHandler(cap)
    return log, cap


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Child:
    """A child process whose stdout lines are collected by a thread (never a blocking read)."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, *args], env=child_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.err = ""
        self._cond = threading.Condition()
        self._out = threading.Thread(target=self._read, daemon=True)
        self._out.start()
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._err.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.err = self.proc.stderr.read()

    def wait_lines(self, n: int, timeout: float) -> None:
        """Until ``n`` lines were printed, the process ended, or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.lines) < n and self.proc.poll() is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, 0.05))

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=WAIT)
        self._out.join(WAIT)
        self._err.join(WAIT)

    def acked(self) -> list[str]:
        return [x[3:] for x in self.lines if x.startswith("ok ")]


def kill_mid_write(path: str, child: Child, limit: float = 2.0) -> bool:
    """SIGKILL ``child`` as soon as the journal ends in a partial line; True if it did.

    A big line is copied into the file page by page, and the file size grows
    as it goes: seeing a last byte that is not a newline means a write is in
    progress, and SIGKILL stops it there (the kernel checks for it between pages).
    """
    deadline = time.monotonic() + limit
    fd = -1
    try:
        while time.monotonic() < deadline and child.proc.poll() is None:
            if fd < 0:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue
            size = os.fstat(fd).st_size
            if size > len(HEADER) and os.pread(fd, 1, size - 1) != b"\n":
                child.kill()
                return True
    finally:
        if fd >= 0:
            os.close(fd)
    child.kill()
    return False


def check_journal(path: str, acked: set[str], max_bytes: dict[str, int], why: str) -> int:
    """Re-open ``path``; assert nothing acknowledged is lost and nothing half-written appears.

    Returns the number of entries found.
    """
    log, cap = logger()
    with Journal.open(path, log) as j:
        entries = list(j.entries())
        found = {}
        for e in entries:
            tag, _n, i = e.name.rsplit(".", 2)
            key, value, digest, inputs = expected(e.name, max_bytes[tag])
            prev = [] if i == "0" else [expected(e.name.rsplit(".", 1)[0] + f".{int(i) - 1}", 1)[0]]
            assert (e.key, e.digest, e.inputs, list(e.dep_keys), e.kind) == (
                key, digest, inputs, prev, "task"), f"{why}: entry {e.name} is not as written"
            found[e.name] = key
        missing = sorted(acked - set(found))
        assert not missing, f"{why}: acknowledged entries lost: {missing[:5]}"
        for name, key in found.items():
            hit = j.get(key)
            assert hit is not None, f"{why}: entry {name} does not load ({cap.warnings})"
            _k, value, digest, inputs = expected(name, max_bytes[name.rsplit(".", 2)[0]])
            assert (hit.value, hit.digest, hit.inputs) == (value, digest, inputs), why
            assert type(hit.value) is type(value), why
        assert len(j) == len(found), why
    # A crash tears at most the line being written: writers hold the lock for
    # their whole write, and the next writer cuts the torn tail before appending.
    # (entries() re-reads the file: the same warning may come twice)
    assert len(set(cap.warnings)) <= 1, f"{why}: {cap.warnings}"
    assert all("torn" in w for w in cap.warnings), f"{why}: {cap.warnings}"
    return len(found)


def tmp_leftovers(directory: str) -> list[str]:
    return [n for n in os.listdir(directory) if re.fullmatch(r"\..*\.[0-9a-f]{16}\.tmp", n)]


# ------------------------------------------------------------------ kill -9 of writers

def test_kill_9_during_record_loses_nothing_acknowledged(tmp_path):
    rng = random.Random(SEED)
    path = str(tmp_path / "run.jsonl")
    trials = 150 if LONG else 44
    acked: set[str] = set()
    ever_acked = 0
    torn = 0          # trials killed while a line was half-written
    max_bytes: dict[str, int] = {}
    for trial in range(trials):
        why = f"seed {SEED}, trial {trial}"
        if os.path.exists(path) and os.path.getsize(path) > (40 << 20):
            # keep the disk use modest: carry on in a fresh journal
            os.unlink(path)
            ever_acked += len(acked)
            acked.clear()
        n_procs = 2 if trial % 4 == 3 else 1
        children = []
        for p in range(n_procs):
            tag = f"w{trial}p{p}"
            max_bytes[tag] = rng.choice([200, 20_000, 1 << 20, 3 << 20])
            threads = rng.choice([1, 1, 3])
            children.append(Child([ACKER, path, tag, str(max_bytes[tag]), str(threads)]))
        how = rng.random()
        if how < 0.2:
            time.sleep(rng.uniform(0, 0.12))        # often still starting: opening, header
        else:
            children[0].wait_lines(1 + rng.randrange(30), timeout=WAIT)
            if how < 0.6 and max(max_bytes[f"w{trial}p{p}"] for p in range(n_procs)) >= 1 << 20:
                torn += kill_mid_write(path, children[0])
            else:
                time.sleep(rng.uniform(0, 0.01))
        for c in children:
            c.kill()
        for c in children:
            assert c.proc.returncode == -signal.SIGKILL, f"{why}: {c.err}"
            acked.update(c.acked())
        if os.path.exists(path):
            check_journal(path, acked, max_bytes, why)
    assert ever_acked + len(acked), f"seed {SEED}: no writer ever acknowledged an entry"
    assert torn or trials < 8, f"seed {SEED}: no kill landed mid-write"
    # The file is clean after the next writer: no torn line left behind.
    log, cap = logger()
    with Journal.open(path, log) as j:
        assert j.record("f" * 64, "final", [], 1)
    cap.warnings.clear()
    with Journal.open(path, log) as j:
        hit = j.get("f" * 64)
        assert hit is not None and (hit.value, hit.digest, hit.inputs) == (1, None, None)
    assert cap.warnings == []


def test_kill_9_during_compact_keeps_a_whole_journal_and_its_temp_file_goes(tmp_path):
    rng = random.Random(SEED + 1)
    path = str(tmp_path / "run.jsonl")
    acked: set[str] = set()
    max_bytes: dict[str, int] = {}
    trials = 40 if LONG else 10
    compactor = ("import logging, sys; from flowing.journal.rewrite import compact\n"
                 "print('started', flush=True)\n"
                 "while True: compact(sys.argv[1], logging.getLogger('c'))")
    killed_with_temp = 0
    for trial in range(trials):
        why = f"seed {SEED}, trial {trial}"
        tag = f"c{trial}"
        max_bytes[tag] = 1 << 20
        writer = Child([ACKER, path, tag, str(max_bytes[tag]), "2"])
        writer.wait_lines(1 + rng.randrange(30), timeout=WAIT)
        comp = Child(["-c", compactor, path])
        comp.wait_lines(1, timeout=WAIT)
        if trial % 2:
            time.sleep(rng.uniform(0, 0.3))
        else:  # as soon as the rewrite's temporary file exists
            deadline = time.monotonic() + 5
            while not tmp_leftovers(str(tmp_path)) and time.monotonic() < deadline:
                pass
        comp.kill()
        writer.kill()
        assert comp.proc.returncode == -signal.SIGKILL, f"{why}: {comp.err}"
        acked.update(writer.acked())
        killed_with_temp += bool(tmp_leftovers(str(tmp_path)))
        check_journal(path, acked, max_bytes, why)   # opening removes any leftover
        assert tmp_leftovers(str(tmp_path)) == [], why
        with open(path, "rb") as f:
            assert f.readline() == HEADER, why
    assert acked, f"seed {SEED}: no writer ever acknowledged an entry"
    assert killed_with_temp, f"seed {SEED}: no kill landed while a temporary file existed"


def test_kill_9_during_a_journaled_flow_run(tmp_path):
    rng = random.Random(SEED + 2)
    trials = 24 if LONG else 8
    n = 60
    for trial in range(trials):
        why = f"seed {SEED}, trial {trial}"
        d = tmp_path / f"t{trial}"
        d.mkdir()
        path, log = str(d / "run.jsonl"), str(d / "calls.log")
        first = Child([FLOW_CHILD, path, log, str(n)])
        deadline = time.monotonic() + WAIT
        stop_after = rng.randrange(1, n)
        while time.monotonic() < deadline and first.proc.poll() is None:
            if len(bodies_ended(log)) >= stop_after:
                break
            time.sleep(0.002)
        first.kill()
        ended = bodies_ended(log)
        journaled: set[str] = set()
        if os.path.exists(path):
            entries = list(iter_entries(path, logging.getLogger("quiet")))
            journaled = {e.name for e in entries}
        assert journaled <= ended, f"{why}: journaled bodies that never finished"
        if os.path.exists(log):
            os.unlink(log)
        second = Child([FLOW_CHILD, path, log, str(n)])
        second.proc.wait(timeout=WAIT)
        second.kill()
        assert second.proc.returncode == 0, f"{why}: {second.err}"
        (res,) = [json.loads(x[7:]) for x in second.lines if x.startswith("RESULT ")]
        assert len(res) == n + 3, why
        assert all(r["state"] == "succeeded" and r["ok"] for r in res.values()), f"{why}: {res}"
        cached = {name for name, r in res.items() if r["cached"]}
        assert cached <= ended, f"{why}: replayed bodies that never finished: {cached - ended}"
        assert journaled <= cached, f"{why}: journaled results not replayed: {journaled - cached}"
        assert bodies_ended(log) == set(res) - cached, why


def bodies_ended(log: str) -> set[str]:
    """Names of the bodies that logged "end NAME" (each writes its line just before returning)."""
    if not os.path.exists(log):
        return set()
    with open(log) as f:
        return set(f.read().split()[1::2])


# ------------------------------------------------------------------ torn tails

def _sample_journal(path: str) -> list[tuple[str, Any, str | None, str | None]]:
    """A journal of JSON, pickled, digest-less and marker entries; returns what has a value."""
    log, _ = logger()
    from flowing.keys.digest import value_digest  # a value read back is checked against it

    rows = [("a" * 64, {"x": [1, 2, "é"]}, value_digest({"x": [1, 2, "é"]}), "e" * 64),
            ("b" * 64, (1, 2.5, None), value_digest((1, 2.5, None)), None),
            ("c" * 64, "plain", None, None),
            ("d" * 64, 10 ** 30, value_digest(10 ** 30), "3" * 64)]
    with Journal.open(path, log) as j:
        for k, v, dg, inp in rows:
            assert j.record(k, k[:3], [], v, digest=dg, inputs=inp)
        assert j.record("m" * 64, "marker", ["a" * 64], None, store=False)
        last = ["the", "last", ("entry",)]
        assert j.record("z" * 64, "last", ["a" * 64], last, digest=value_digest(last))
    return [*rows, ("z" * 64, last, value_digest(last), None)]


def _assert_holds(j: Journal, rows: list[tuple[str, Any, str | None, str | None]], why: str) -> None:
    for k, v, dg, inp in rows:
        hit = j.get(k)
        assert hit is not None and (hit.value, hit.digest, hit.inputs) == (v, dg, inp), why
    assert len(j) == len(rows), why


def test_truncation_at_every_offset_of_the_last_line(tmp_path):
    path = str(tmp_path / "run.jsonl")
    rows = _sample_journal(path)
    data = open(path, "rb").read()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    for cut in range(start, len(data)):
        why = f"cut at {cut} of {len(data)}"
        with open(path, "wb") as f:
            f.write(data[:cut])
        log, cap = logger()
        with Journal.open(path, log) as j:
            _assert_holds(j, rows[:-1], why)
            assert len(cap.warnings) == (0 if cut == start else 1), why
            assert j.record("n" * 64, "next", [], cut)
        with Journal.open(path, log) as j:
            _assert_holds(j, [*rows[:-1], ("n" * 64, cut, None, None)], why)
        assert len(cap.warnings) == (0 if cut == start else 1), why  # no new damage
        assert open(path, "rb").read().startswith(data[:start]), why


def _assert_refused_untouched(path: str, why: str) -> None:
    before = open(path, "rb").read()
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    log, _cap = logger()
    with pytest.raises(JournalError, match="not a flowing journal"):
        Journal.open(path, log)
    assert open(path, "rb").read() == before, why
    assert os.stat(path).st_mtime_ns == 1_000_000_000_000_000_000, why


def test_a_file_holding_a_cut_header_is_not_a_journal(tmp_path):
    # flowing never leaves a torn header (a new journal is linked into place whole), so a
    # one-line file without a newline is someone else's: refused, bytes and mtime unchanged.
    path = str(tmp_path / "run.jsonl")
    for cut in range(1, len(HEADER)):
        with open(path, "wb") as f:
            f.write(HEADER[:cut])
        _assert_refused_untouched(path, f"cut at {cut}")
    with open(path, "wb"):
        pass
    log, cap = logger()
    with Journal.open(path, log) as j:  # an empty file is a new journal
        assert len(j) == 0 and j.record("a" * 64, "a", [], 1)
    assert open(path, "rb").read().startswith(HEADER) and cap.warnings == []


@pytest.mark.parametrize("text", [b'{"format":"flowing-journal","note":"my data"}', b"{",
                                  b'{"format":"flowing-journal","version":2}', b'{"v":1,"crc":"'])
def test_one_line_files_without_a_newline_are_refused_untouched(tmp_path, text):
    path = str(tmp_path / "data.json")
    with open(path, "wb") as f:
        f.write(text)
    _assert_refused_untouched(path, repr(text))


def test_a_cut_legacy_journals_only_line_is_not_a_journal(tmp_path):
    path = str(tmp_path / "run.jsonl")
    line = _v1_line("a" * 64, "a", '{"old":1}')
    for cut in (1, 10, len(line) - 2, len(line) - 1):
        with open(path, "wb") as f:
            f.write(line[:cut])
        _assert_refused_untouched(path, f"cut at {cut}")


def test_creating_a_journal_never_shows_a_partial_header(tmp_path):
    # A reader polling the path while journals are created sees nothing or a whole header.
    path = str(tmp_path / "run.jsonl")
    log, _cap = logger()
    stop = threading.Event()
    seen: list[bytes] = []

    def poll() -> None:
        while not stop.is_set():
            try:
                with open(path, "rb") as f:
                    seen.append(f.read())
            except FileNotFoundError:
                pass

    t = threading.Thread(target=poll)
    t.start()
    try:
        for _ in range(200):
            Journal.open(path, log).close()
            os.unlink(path)
    finally:
        stop.set()
        t.join()
    assert seen and all(data == HEADER for data in seen)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def _v1_line(key: str, name: str, value_text: str, deps: str = "[]") -> bytes:
    """An entry as flowing 0.1.0 wrote it."""
    import binascii
    rest = (f'"key":"{key}","kind":"task","name":"{name}","deps":{deps},"t":1763850000.000,'
            f'"enc":"json","value":{value_text}}}').encode()
    return b'{"v":1,"crc":"%08x",%s\n' % (binascii.crc32(rest), rest)


# ------------------------------------------------------------------ damaged bytes

def _check_damaged(path: str, original: bytes, rows: list[tuple[str, Any, str | None, str | None]],
                   touched: range, why: str) -> None:
    """Open a damaged copy: refused untouched (header hit) or every surviving entry exact."""
    starts = [0] + [i + 1 for i, b in enumerate(original) if b == 0x0A]
    line_of = {}
    for n, (s, e) in enumerate(zip(starts, starts[1:])):
        line_of[n] = (s, e)
    hit_lines = {n for n, (s, e) in line_of.items() if s < touched.stop and touched.start < e}
    # a damaged newline glues a line to the next
    hit_lines |= {n + 1 for n in hit_lines if original[line_of[n][1] - 1] == 0x0A
                  and line_of[n][1] - 1 in touched}
    before = open(path, "rb").read()
    # a newline written into a line splits it: one more line that may be skipped
    split = before[touched.start:touched.stop].count(b"\n")
    log, cap = logger()
    try:
        j = Journal.open(path, log)
    except JournalError as e:
        assert 0 in hit_lines, f"{why}: refused although the header is intact: {e}"
        assert open(path, "rb").read() == before, why
        return
    with j:
        keys_by_line = {}
        for n, (s, e) in line_of.items():
            m = re.search(rb'"key":"([^"]+)"', original[s:e])
            if m:
                keys_by_line[n] = m.group(1).decode()
        may_lose = {keys_by_line.get(n) for n in hit_lines}
        for k, v, dg, inp in rows:
            hit = j.get(k)
            if hit is None:
                assert k in may_lose, f"{why}: lost an undamaged entry {k[:6]}"
            else:
                assert (hit.value, hit.digest, hit.inputs) == (v, dg, inp), f"{why}: wrong entry"
                assert type(hit.value) is type(v), why
        written = {r[0] for r in rows} | {"m" * 64}
        for e in j.entries():
            assert e.key in written, f"{why}: an entry that was never written: {e.key!r}"
        assert len(set(cap.warnings)) <= len(hit_lines) + split, f"{why}: {cap.warnings}"


def test_byte_flips_at_every_offset(tmp_path):
    rng = random.Random(SEED + 3)
    src = str(tmp_path / "src.jsonl")
    rows = _sample_journal(src)
    original = open(src, "rb").read()
    path = str(tmp_path / "run.jsonl")
    masks = [0x01, 0x02, 0x20, 0x80, 0xFF] + ([rng.randrange(1, 256) for _ in range(10)] if LONG else [])
    for pos in range(len(original)):
        for mask in masks if LONG or pos % 2 == 0 else masks[:2]:
            data = bytearray(original)
            data[pos] ^= mask
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, 0o600)
            _check_damaged(path, original, rows, range(pos, pos + 1),
                           f"seed {SEED}: byte {pos} ^ {mask:#04x}")


def test_random_multi_byte_damage(tmp_path):
    rng = random.Random(SEED + 4)
    src = str(tmp_path / "src.jsonl")
    rows = _sample_journal(src)
    original = open(src, "rb").read()
    path = str(tmp_path / "run.jsonl")
    for trial in range(3000 if LONG else 300):
        pos = rng.randrange(len(original))
        n = rng.randrange(1, 40)
        data = bytearray(original)
        splat = bytes(rng.randrange(256) for _ in range(n))
        data[pos:pos + n] = splat[:len(data) - pos]
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o600)
        _check_damaged(path, original, rows, range(pos, min(pos + n, len(original))),
                       f"seed {SEED}: trial {trial}, {n} bytes at {pos}")


@pytest.mark.parametrize("version_digit", [b"0", b"1", b"3", b"9"])
def test_a_damaged_version_digit_never_yields_a_wrong_entry(tmp_path, version_digit):
    """v2 -> v1 keeps the checksum valid: the digest fields then betray it."""
    path = str(tmp_path / "run.jsonl")
    rows = _sample_journal(path)
    data = open(path, "rb").read()
    damaged = data.replace(b'{"v":2,', b'{"v":' + version_digit + b",")
    with open(path, "wb") as f:
        f.write(damaged)
    log, cap = logger()
    with Journal.open(path, log) as j:
        assert len(j) == 0
        for k, *_ in rows:
            assert j.get(k) is None
    assert len(cap.warnings) == 6
