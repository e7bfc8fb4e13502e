"""The durable journal: encoding, trust, corruption, concurrency, crashes."""

from __future__ import annotations

import binascii
import collections
import datetime
import errno
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from flowing.errors import JournalError  # noqa: E402
from flowing.journal import format as jformat  # noqa: E402
from flowing.journal import values as valuestore  # noqa: E402
from flowing.journal.format import HEADER, Hit  # noqa: E402
from flowing.journal.rewrite import compact, forget  # noqa: E402
from flowing.journal.scan import iter_entries  # noqa: E402
from flowing.journal.store import Journal  # noqa: E402
from flowing.keys.digest import value_digest  # noqa: E402

WRITER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "journal_fixtures", "writer.py")
LOG = logging.getLogger("test_journal")


def K(s: str) -> str:
    """A step key as the engine makes them: 64 hex chars."""
    return hashlib.sha256(s.encode()).hexdigest()


class Point:
    """A module-level class: picklable, not JSON."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)


class Unloadable:
    """Pickles fine, fails to unpickle."""

    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise RuntimeError("boom on load")


def lines(path) -> list[dict]:
    """The entries of the file as JSON (after its header line, which must be there)."""
    with open(path, "rb") as f:
        assert f.readline() == HEADER
        return [json.loads(line) for line in f]


def make_line(key: str, name: str, value_text: str, *, kind: str = "task", deps: str = "[]",
              t: str = "1763850000.000", digest: str = "null", inputs: str = "null",
              enc: str = "json", version: int = 2, fields: str | None = None) -> bytes:
    """An entry line as the module docstring specifies it, with a valid checksum.

    ``fields`` replaces everything between the checksum and the value, to write
    lines whose checksum is right but whose fields are not.
    """
    if fields is None:
        fields = (f'"key":{json.dumps(key)},"kind":{json.dumps(kind)},"name":{json.dumps(name)},'
                  f'"deps":{deps},"t":{t}')
        if version == 2:
            fields += f',"digest":{digest},"inputs":{inputs}'
        fields += f',"enc":"{enc}"'
    rest = (fields + ',"value":' + value_text + "}").encode()
    return b'{"v":%d,"crc":"%08x",%s\n' % (version, binascii.crc32(rest), rest)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def writer_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def jpath(tmp_path):
    return str(tmp_path / "run.jsonl")


@pytest.fixture
def caplog_w(caplog):
    caplog.set_level(logging.WARNING, logger="test_journal")
    return caplog


# ------------------------------------------------------------ round trips

JSON_VALUES = [
    {"a": 1, "b": [1, 2.5, None, True, False, "x"], "nested": {"k": {}}},
    [1, "two", 3.0, [], {}],
    "text with \n newline, \"quotes\" and unicode é ✓",
    42, -7, 2 ** 80, 0.1, 1e300, True, False, None, "",
]

PICKLED_VALUES = [
    (1, 2, 3),
    {1, 2, 3},
    frozenset({"a"}),
    datetime.datetime(2025, 11, 22, 10, 30, 1, 5),
    Point(1, 2),
    float("nan"),
    float("inf"),
    {1: "int key"},
    {"ok": (1, 2)},
    [1, (2,)],
    b"bytes",
    collections.OrderedDict(a=1),
    10 ** 5000,  # too long for int -> str: stored as pickle
]


def test_json_values_round_trip_and_are_readable_in_the_file(jpath):
    with Journal.open(jpath, LOG) as j:
        for i, v in enumerate(JSON_VALUES):
            assert j.record(K(str(i)), f"t{i}", [], v) is True
            assert j.lookup(K(str(i))) == (True, v)
    entries = lines(jpath)
    assert [e["enc"] for e in entries] == ["json"] * len(JSON_VALUES)
    assert [e["value"] for e in entries] == JSON_VALUES  # the value itself, not an encoding
    with Journal.open(jpath, LOG) as j:
        for i, v in enumerate(JSON_VALUES):
            ok, got = j.lookup(K(str(i)))
            assert ok and got == v and type(got) is type(v)


def test_non_json_values_are_pickled_and_round_trip(jpath):
    with Journal.open(jpath, LOG) as j:
        for i, v in enumerate(PICKLED_VALUES):
            assert j.record(K(str(i)), f"t{i}", [], v) is True
    assert [e["enc"] for e in lines(jpath)] == ["pickle"] * len(PICKLED_VALUES)
    with Journal.open(jpath, LOG) as j:
        for i, v in enumerate(PICKLED_VALUES):
            ok, got = j.lookup(K(str(i)))
            assert ok and type(got) is type(v)
            if isinstance(v, float):
                assert str(got) == str(v)  # nan != nan
            else:
                assert got == v


def test_lone_surrogate_string_round_trips_as_json(jpath):
    v = "bad \udc80 surrogate"
    with Journal.open(jpath, LOG) as j:
        assert j.record(K("s"), "s", [], v)
    assert lines(jpath)[0]["enc"] == "json"
    with Journal.open(jpath, LOG) as j:
        assert j.lookup(K("s")) == (True, v)


def test_entry_fields_and_lookup_of_unknown_key(jpath):
    with Journal.open(jpath, LOG) as j:
        j.record(K("a"), "a", [], 1)
        j.record(K("b"), "b[0]", [K("a")], 2, kind="item")
        j.record(K("c"), "c", [K("a"), K("b")], 3, kind="override")
        assert j.lookup(K("nope")) == (False, None)
        assert K("a") in j and K("nope") not in j
        got = list(j.entries())
    first = lines(jpath)[0]
    assert list(first) == ["v", "crc", "key", "kind", "name", "deps", "t", "digest", "inputs",
                           "enc", "value"]
    assert first["v"] == 2 and first["key"] == K("a") and first["name"] == "a"
    assert first["digest"] is None and first["inputs"] is None
    assert abs(first["t"] - time.time()) < 60
    assert [(e.name, e.kind, e.dep_keys) for e in got] == [
        ("a", "task", ()), ("b[0]", "item", (K("a"),)), ("c", "override", (K("a"), K("b")))]
    assert got[1].task == "b" and got[2].preview == "3"
    assert got[0].offset == len(HEADER) and got[1].offset == got[0].offset + got[0].size
    assert got[0].line == 2 and got[0].version == 2


def test_record_rejects_unknown_kind(jpath):
    with Journal.open(jpath, LOG) as j, pytest.raises(ValueError, match="kind"):
        j.record(K("a"), "a", [], 1, kind="bogus")


def test_file_is_created_with_mode_0600(jpath):
    old = os.umask(0)
    try:
        Journal.open(jpath, LOG).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(jpath).st_mode) == 0o600


def test_reopening_sees_the_latest_entry_per_key(jpath):
    with Journal.open(jpath, LOG) as j:
        j.record(K("a"), "a", [], "first")
        j.record(K("b"), "b", [], "other")
        j.record(K("a"), "a", [], "second")
        assert j.lookup(K("a")) == (True, "second")
    with Journal.open(jpath, LOG) as j:
        assert j.lookup(K("a")) == (True, "second")
        assert j.lookup(K("b")) == (True, "other")
        assert len(j) == 2


def test_large_values_longer_than_the_read_buffers(jpath, caplog_w, monkeypatch):
    # Lines this long are only written with the value store off (or by 0.2.0).
    monkeypatch.setattr(valuestore, "THRESHOLD", 1 << 40)
    big = "y" * (6 << 20)  # longer than a read chunk and than the in-memory head
    with Journal.open(jpath, LOG) as j:
        assert j.record(K("big"), "big", [], big)
        assert j.record(K("big2"), "big2", [], (big,))
        j.record(K("small"), "small", [], 1)
    with Journal.open(jpath, LOG) as j:
        assert j.lookup(K("big")) == (True, big)
        assert j.lookup(K("big2")) == (True, (big,))
        assert j.lookup(K("small")) == (True, 1)
        assert [e.name for e in j.entries()] == ["big", "big2", "small"]
    assert warnings_of(caplog_w) == []
    # Damage one byte in the middle of the first long line: detected while streaming.
    with open(jpath, "r+b") as f:
        f.seek(3 << 20)
        f.write(b"z")
    with Journal.open(jpath, LOG) as j:
        assert K("big") not in j
        assert j.lookup(K("small")) == (True, 1)
    (w,) = warnings_of(caplog_w)
    assert "line 2" in w and "checksum" in w


# ---------------------------------------------------------- pickle trust

def _mixed_journal(jpath):
    with Journal.open(jpath, LOG) as j:
        j.record(K("json"), "json", [], {"a": 1})
        j.record(K("p1"), "p1", [], (1, 2))
        j.record(K("p2"), "p2", [], {3})


def test_pickles_refused_when_file_is_writable_by_others(jpath, caplog_w):
    _mixed_journal(jpath)
    os.chmod(jpath, 0o666)
    with Journal.open(jpath, LOG) as j:
        assert j.lookup(K("p1")) == (False, None)
        assert j.lookup(K("p2")) == (False, None)
        assert j.lookup(K("p1")) == (False, None)
        assert j.lookup(K("json")) == (True, {"a": 1})
        assert K("p1") in j  # journaled, just not loadable
    (w,) = warnings_of(caplog_w)
    assert "writable by group or others" in w and f"chmod 600 {jpath}" in w
    os.chmod(jpath, 0o600)
    with Journal.open(jpath, LOG) as j:
        assert j.lookup(K("p1")) == (True, (1, 2))


def test_pickles_refused_when_file_is_owned_by_someone_else(jpath, caplog_w, monkeypatch):
    _mixed_journal(jpath)
    me = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)
    with Journal.open(jpath, LOG) as j:
        assert j.lookup(K("p1")) == (False, None)
        assert j.lookup(K("p2")) == (False, None)
        assert j.lookup(K("json")) == (True, {"a": 1})
    (w,) = warnings_of(caplog_w)
    assert f"owned by uid {me}" in w and "chmod 600" in w


def test_entry_that_fails_to_unpickle_warns_once_and_reruns(jpath, caplog_w):
    with Journal.open(jpath, LOG) as j:
        assert j.record(K("u"), "u", [], Unloadable())
        j.record(K("ok"), "ok", [], (1,))
    with Journal.open(jpath, LOG) as j:
        assert j.lookup(K("u")) == (False, None)
        assert j.lookup(K("u")) == (False, None)
        assert j.lookup(K("ok")) == (True, (1,))
    (w,) = warnings_of(caplog_w)
    assert "'u'" in w and "boom on load" in w


def test_unpicklable_value_warns_returns_false_and_writes_only_a_marker(jpath, caplog_w):
    with Journal.open(jpath, LOG) as j:
        assert j.record(K("x"), "x", [K("dep")], threading.Lock()) is False
        assert K("x") not in j
        assert j.lookup(K("x")) == (False, None)
        assert j.record(K("y"), "y", [], 1) is True  # the journal still works
    # the marker keeps the dependency chain for `journal forget`, but never replays
    marker = lines(jpath)[0]
    assert (marker["name"], marker["enc"], marker["value"], marker["deps"]) == (
        "x", "none", None, [K("dep")])
    with Journal.open(jpath, LOG) as j:
        assert K("x") not in j and j.lookup(K("y")) == (True, 1)
    (w,) = warnings_of(caplog_w)
    assert w.startswith("task 'x': result not journaled (TypeError: cannot pickle")
    assert "it will run again next time" in w


# ----------------------------------------------------- damaged files

def test_torn_garbage_unknown_version_and_kind_are_skipped_with_one_warning_each(jpath, caplog_w):
    with Journal.open(jpath, LOG) as j:
        j.record(K("a"), "a", [], 1)
        j.record(K("b"), "b", [], (2,))
    unknown_kind = make_line(K("k"), "k", "1", kind="sometask")
    future = b'{"v":3,"crc":"00000000","key":"%s","kind":"task","value":1}\n' % K("f").encode()
    with open(jpath, "ab") as f:
        f.write(b"this is not json\n")
        f.write(future)
        f.write(b"\n")  # blank lines are ignored silently
        f.write(unknown_kind)
        f.write(make_line(K("c"), "c", "3"))
        f.write(make_line(K("d"), "d", "4")[:50])  # torn
    with Journal.open(jpath, LOG) as j:
        assert j.lookup(K("a")) == (True, 1)
        assert j.lookup(K("b")) == (True, (2,))
        assert j.lookup(K("c")) == (True, 3)
        for k in ("k", "f", "d"):
            assert K(k) not in j
    ws = warnings_of(caplog_w)
    assert len(ws) == 4
    assert "line 4" in ws[0] and "corrupt" in ws[0]
    assert "line 5" in ws[1] and "version 3" in ws[1]
    assert "line 7" in ws[2] and "unknown entry kind 'sometask'" in ws[2]
    assert "line 9" in ws[3] and "torn" in ws[3]


def test_corrupt_latest_entry_falls_back_to_the_previous_one(jpath, caplog_w):
    with Journal.open(jpath, LOG) as j:
        j.record(K("a"), "a", [], "old")
        j.record(K("a"), "a", [], "new")
    data = open(jpath, "rb").read()
    with open(jpath, "wb") as f:
        f.write(data.replace(b'"new"', b'"nEw"'))
    with Journal.open(jpath, LOG) as j:
        assert j.lookup(K("a")) == (True, "old")
    assert len(warnings_of(caplog_w)) == 1


def test_torn_tail_is_cut_before_the_next_append(jpath, caplog_w):
    with Journal.open(jpath, LOG) as j:
        j.record(K("a"), "a", [], 1)
    with open(jpath, "ab") as f:
        f.write(b'{"v":1,"crc":"12345678","key":"')  # a writer died here
    with Journal.open(jpath, LOG) as j:
        assert len(warnings_of(caplog_w)) == 1
        assert j.record(K("b"), "b", [], 2)
        assert j.lookup(K("b")) == (True, 2)
    caplog_w.clear()
    with Journal.open(jpath, LOG) as j:
        assert j.lookup(K("a")) == (True, 1) and j.lookup(K("b")) == (True, 2)
    assert warnings_of(caplog_w) == []
    assert [e["key"] for e in lines(jpath)] == [K("a"), K("b")]


def test_many_bad_lines_are_summarised(jpath, caplog_w):
    with open(jpath, "wb") as f:
        f.write(HEADER + b"junk\n" * 100)
    with Journal.open(jpath, LOG) as j:
        assert len(j) == 0
    ws = warnings_of(caplog_w)
    assert len(ws) == 20 + 1  # 20 warnings, then one summary
    assert "80 more unreadable lines" in ws[-1]


# ------------------------------------------------------------ open errors

def test_missing_directory_raises_before_creating_anything(tmp_path):
    path = str(tmp_path / "nodir" / "run.jsonl")
    with pytest.raises(JournalError) as e:
        Journal.open(path, LOG)
    msg = str(e.value)
    assert path in msg and "directory" in msg and "does not exist" in msg and "journal_path" in msg
    assert "\n" not in msg
    assert not os.path.exists(tmp_path / "nodir")


def test_directory_path_raises(tmp_path):
    with pytest.raises(JournalError, match="is a directory"):
        Journal.open(str(tmp_path), LOG)


def test_parent_is_a_file_raises(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(JournalError, match="not a directory"):
        Journal.open(str(tmp_path / "f" / "run.jsonl"), LOG)


def test_unwritable_directory_raises(tmp_path, monkeypatch):
    real_open = os.open

    def deny(path, flags, *a, **k):
        if os.fspath(path).endswith("run.jsonl"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(JournalError, match="cannot be read and written .Permission denied"):
        Journal.open(str(tmp_path / "run.jsonl"), LOG)


# ------------------------------------------------------- write failures

def test_write_error_disables_the_journal_with_one_warning(jpath, caplog_w, monkeypatch):
    j = Journal.open(jpath, LOG)
    assert j.record(K("a"), "a", [], 1)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    assert j.record(K("b"), "b", [], 2) is False
    assert j.record(K("c"), "c", [], 3) is False
    monkeypatch.undo()
    assert j.record(K("d"), "d", [], 4) is False  # stays disabled for the run
    assert j.lookup(K("a")) == (True, 1)
    j.close()
    (w,) = warnings_of(caplog_w)
    assert "disabled for the rest of this run" in w and "No space left" in w
    assert "kept in memory" in w


def test_fsync_error_disables_the_journal(jpath, caplog_w, monkeypatch):
    j = Journal.open(jpath, LOG)

    def bad(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", bad)
    assert j.record(K("a"), "a", [], 1) is False
    assert j.record(K("b"), "b", [], 1) is False
    j.close()
    assert len(warnings_of(caplog_w)) == 1


def test_removed_file_disables_the_journal(jpath, caplog_w):
    j = Journal.open(jpath, LOG)
    assert j.record(K("a"), "a", [], 1)
    os.unlink(jpath)
    assert j.record(K("b"), "b", [], 2) is False
    j.close()
    (w,) = warnings_of(caplog_w)
    assert "removed" in w and "disabled" in w


def test_record_after_close_is_a_no_op(jpath):
    j = Journal.open(jpath, LOG)
    j.close()
    j.close()
    assert j.record(K("a"), "a", [], 1) is False
    assert j.lookup(K("a")) == (False, None)


def test_writer_follows_a_rewrite_by_another_handle(jpath):
    a = Journal.open(jpath, LOG)
    a.record(K("x"), "x", [], 1)
    a.record(K("x"), "x", [], 2)
    a.record(K("y"), "y", [K("x")], 3)
    before = os.stat(jpath).st_ino
    compact(jpath, LOG)
    assert os.stat(jpath).st_ino != before
    assert a.record(K("z"), "z", [], 4)  # lands in the new file, index rebuilt
    assert a.lookup(K("x")) == (True, 2) and a.lookup(K("z")) == (True, 4)
    forget(jpath, ["y"], LOG)
    assert a.record(K("w"), "w", [], 5)
    assert K("y") not in a
    a.close()
    assert [e["name"] for e in lines(jpath)] == ["x", "z", "w"]


# ------------------------------------------------------------ concurrency

def _check_all_present(jpath, tags, count, max_bytes):
    sys.path.insert(0, os.path.dirname(WRITER))
    try:
        import writer
    finally:
        sys.path.pop(0)
    raw = lines(jpath)  # every line parses as JSON
    assert len(raw) == len(tags) * count
    with Journal.open(jpath, LOG) as j:
        assert len(j) == len(tags) * count
        for tag in tags:
            for i in range(count):
                assert j.lookup(writer.key(tag, i)) == (True, writer.value(tag, i, max_bytes))


def test_concurrent_processes_append_without_interleaving(jpath, caplog_w):
    tags, count, max_bytes = ["p0", "p1", "p2", "p3"], 600, 200_000
    procs = [subprocess.Popen([sys.executable, WRITER, jpath, tag, str(count), str(max_bytes)],
                              env=writer_env(), stdout=subprocess.DEVNULL)
             for tag in tags]
    for p in procs:
        assert p.wait(timeout=60) == 0
    _check_all_present(jpath, tags, count, max_bytes)
    assert warnings_of(caplog_w) == []


def test_concurrent_threads_append_without_interleaving(jpath, caplog_w):
    sys.path.insert(0, os.path.dirname(WRITER))
    try:
        import writer
    finally:
        sys.path.pop(0)
    tags, count, max_bytes = [f"t{n}" for n in range(8)], 250, 100_000
    j = Journal.open(jpath, LOG)
    other = Journal.open(jpath, LOG)  # a second handle in the same process: excluded by flock
    results = []

    def work(tag, jr):
        results.append(all(jr.record(writer.key(tag, i), f"{tag}.{i}", [], writer.value(tag, i, max_bytes))
                           for i in range(count)))

    threads = [threading.Thread(target=work, args=(t, j if n % 2 else other)) for n, t in enumerate(tags)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * len(tags)
    # Entries recorded through `j` are visible to it without reopening.
    assert j.lookup(writer.key("t1", 5)) == (True, writer.value("t1", 5, max_bytes))
    j.close()
    other.close()
    _check_all_present(jpath, tags, count, max_bytes)
    assert warnings_of(caplog_w) == []


def _child_records(j, n):
    ok = all(j.record(K(f"child{i}"), "child", [], i) for i in range(n))
    os._exit(0 if ok else 1)


def test_forked_child_uses_its_own_lock(jpath):
    j = Journal.open(jpath, LOG)
    j.record(K("before"), "before", [], 0)
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_child_records, args=(j, 300))
    p.start()
    assert all(j.record(K(f"parent{i}"), "parent", [], i) for i in range(300))
    p.join(30)
    assert p.exitcode == 0
    j.close()
    with Journal.open(jpath, LOG) as j:
        assert len(j) == 601
        assert j.lookup(K("child299")) == (True, 299)


def test_kill_9_loses_at_most_the_torn_last_line(jpath, caplog_w):
    p = subprocess.Popen([sys.executable, WRITER, jpath, "k", "0", str(3 << 20), "--forever"],
                         env=writer_env(), stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"started\n"
    deadline = time.time() + 20
    while os.path.getsize(jpath) < (20 << 20) and time.time() < deadline:
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stdout.close()
    data = open(jpath, "rb").read()
    complete = data.count(b"\n")  # the header and the finished entries
    torn = not data.endswith(b"\n")
    assert complete >= 3
    with Journal.open(jpath, LOG) as j:
        assert len(j) == complete - 1  # every finished entry is there
        ws = warnings_of(caplog_w)
        assert len(ws) == (1 if torn else 0)
        if torn:
            assert "torn" in ws[0] and f"line {complete + 1}" in ws[0]
        # the next writer carries on cleanly after the torn tail
        assert j.record(K("after"), "after", [], 1)
    caplog_w.clear()
    with Journal.open(jpath, LOG) as j:
        assert len(j) == complete
    assert warnings_of(caplog_w) == []


# ------------------------------------------------- entry format 2: digests

def test_record_with_digests_then_peek_and_get(jpath):
    DA, DB = value_digest({"v": 1}), value_digest((1, 2))
    with Journal.open(jpath, LOG) as j:
        t0 = time.time()
        assert j.record(K("a"), "a", [], {"v": 1}, digest=DA, inputs="i" * 64) is True
        assert j.record(K("b"), "b", [K("a")], (1, 2), digest=DB) is True
        t, digest, inputs = j.peek(K("a"))
        assert abs(t - t0) < 60 and (digest, inputs) == (DA, "i" * 64)
        assert j.get(K("a")) == Hit({"v": 1}, DA, "i" * 64, t)
        assert j.peek(K("nope")) is None and j.get(K("nope")) is None
    with Journal.open(jpath, LOG) as j:  # the same from the file
        assert j.get(K("a")) == Hit({"v": 1}, DA, "i" * 64, t)
        hit = j.get(K("b"))
        assert hit is not None and (hit.value, hit.digest, hit.inputs) == ((1, 2), DB, None)
        assert j.peek(K("b"))[1:] == (DB, None)
        assert j.lookup(K("b")) == (True, (1, 2))  # the 0.1 API still answers
        (ea, eb) = j.entries()
        assert (ea.digest, ea.inputs, ea.version, eb.digest, eb.inputs) == (
            DA, "i" * 64, 2, DB, None)
    assert [(e["digest"], e["inputs"]) for e in lines(jpath)] == [(DA, "i" * 64), (DB, None)]


def test_store_false_writes_a_marker_that_never_replays(jpath):
    with Journal.open(jpath, LOG) as j:
        assert j.record(K("m"), "m", [K("dep")], "ignored", store=False, inputs="i" * 64) is True
        assert K("m") not in j and j.peek(K("m")) is None and j.get(K("m")) is None
        # a marker after a stored value leaves that value as the latest one *with* a value
        assert j.record(K("v"), "v", [], 1, digest=value_digest(1))
        assert j.record(K("v"), "v", [], 2, store=False)
        assert j.get(K("v")).value == 1  # type: ignore[union-attr]
    (m, v1, v2) = lines(jpath)
    assert (m["enc"], m["value"], m["deps"], m["inputs"]) == ("none", None, [K("dep")], "i" * 64)
    assert (v2["enc"], v2["value"]) == ("none", None)
    with Journal.open(jpath, LOG) as j:
        assert K("m") not in j and j.get(K("v")).value == 1  # type: ignore[union-attr]
        assert [e.preview for e in j.entries()] == ["<value not stored>", "1", "<value not stored>"]


@pytest.mark.parametrize("bad", [b"x", 1, ["a"]])
def test_record_rejects_digests_that_are_not_str(jpath, bad):
    with Journal.open(jpath, LOG) as j:
        with pytest.raises(TypeError, match="digest"):
            j.record(K("a"), "a", [], 1, digest=bad)
        with pytest.raises(TypeError, match="inputs"):
            j.record(K("a"), "a", [], 1, inputs=bad)
        assert len(j) == 0
    assert lines(jpath) == []


def test_peek_hides_pickles_the_file_may_not_load(jpath, caplog_w):
    _mixed_journal(jpath)
    os.chmod(jpath, 0o644 | 0o020)
    with Journal.open(jpath, LOG) as j:
        assert j.peek(K("p1")) is None and j.get(K("p1")) is None
        assert j.peek(K("json")) is not None
    assert len(warnings_of(caplog_w)) == 1


# -------------------------------------------------------- 0.1.0 journals

def v1_line(key: str, name: str, value_text: str, deps: str = "[]") -> bytes:
    return make_line(key, name, value_text, deps=deps, version=1)


def test_a_0_1_journal_opens_reads_appends_and_compact_upgrades_it(jpath, caplog_w):
    old = v1_line(K("a"), "a", '{"x":1}') + v1_line(K("b"), "b", "[1,2]", deps=json.dumps([K("a")]))
    with open(jpath, "wb") as f:
        f.write(old)
    os.chmod(jpath, 0o600)
    with Journal.open(jpath, LOG) as j:
        assert j.get(K("a")) == Hit({"x": 1}, None, None, 1763850000.0)
        assert j.peek(K("b")) == (1763850000.0, None, None)
        assert j.record(K("c"), "c", [K("b")], 3, digest=value_digest(3))
        assert [e.version for e in j.entries()] == [1, 1, 2]
    data = open(jpath, "rb").read()
    assert data.startswith(old) and HEADER not in data  # appended as it was
    with Journal.open(jpath, LOG) as j:
        assert j.get(K("b")).value == [1, 2] and j.get(K("c")).digest == value_digest(3)  # type: ignore[union-attr]
    r = compact(jpath, LOG)
    assert (r.lines_before, r.entries_after) == (3, 3)
    data = open(jpath, "rb").read()
    assert data.startswith(HEADER + old)  # upgraded: the header, then the same lines
    with Journal.open(jpath, LOG) as j:
        assert len(j) == 3 and j.get(K("a")).value == {"x": 1}  # type: ignore[union-attr]
    assert warnings_of(caplog_w) == []


# ----------------------------------------------------------------- header

def test_a_new_journal_is_its_header_alone_until_something_is_recorded(jpath):
    Journal.open(jpath, LOG).close()
    assert open(jpath, "rb").read() == HEADER == b'{"format":"flowing-journal","version":2}\n'
    Journal.open(jpath, LOG).close()
    assert open(jpath, "rb").read() == HEADER


def test_a_journal_emptied_behind_our_back_gets_its_header_again(jpath):
    with Journal.open(jpath, LOG) as j:
        j.record(K("a"), "a", [], 1)
        os.truncate(jpath, 0)
        assert j.record(K("b"), "b", [], 2)
    assert [e["name"] for e in lines(jpath)] == ["b"]


_OPEN_AND_RECORD = """
import logging, sys, time
from flowing.journal.store import Journal
while time.time() < float(sys.argv[2]):
    pass
with Journal.open(sys.argv[1], logging.getLogger()) as j:
    assert j.record(sys.argv[3] * 64, sys.argv[3], [], 1)
"""


def test_concurrent_creators_write_one_header(tmp_path):
    for attempt in range(2):
        path = str(tmp_path / f"run{attempt}.jsonl")
        go = str(time.time() + 1.0)
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AND_RECORD, path, go, c],
                                  env=writer_env()) for c in "abcdef"]
        for p in procs:
            assert p.wait(timeout=60) == 0
        data = open(path, "rb").read()
        assert data.startswith(HEADER) and data.count(HEADER) == 1
        assert sorted(e["name"] for e in lines(path)) == list("abcdef")


# ------------------------------------------------ files that are not journals

NOT_JOURNALS = {
    "notes": b"my notes\nsecond line\n",
    "one-line config, no newline": b'{"debug": true, "level": 3}',
    "one-line config": b'{"debug": true}\n',
    "binary": bytes(range(256)) * 4,
    "blank lines": b"\n\n\n",
    "spaces": b"   ",
    "a header of another format": b'{"format":"other","version":2}\n',
    "a header without a version": b'{"format":"flowing-journal"}\n',
    "an entry with a bad checksum first": make_line(K("a"), "a", "1").replace(b'"value":1', b'"value":2'),
    "text, then a journal": b"notes\n" + HEADER + make_line(K("a"), "a", "1"),
    "a blank line, then a journal": b"\n" + HEADER,
}


def _frozen(path) -> tuple[bytes, int]:
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    return open(path, "rb").read(), os.stat(path).st_mtime_ns


@pytest.mark.parametrize("content", NOT_JOURNALS.values(), ids=NOT_JOURNALS.keys())
def test_a_file_that_is_not_a_journal_is_refused_and_left_untouched(tmp_path, content):
    path = str(tmp_path / "config.json")
    with open(path, "wb") as f:
        f.write(content)
    before = _frozen(path)
    attempts = [lambda: Journal.open(path, LOG), lambda: compact(path, LOG),
                lambda: forget(path, ["a"], LOG)]
    if b'"v":2' not in content:  # show lists what valid entries a damaged journal still holds
        attempts.append(lambda: list(iter_entries(path, LOG)))
    for attempt in attempts:
        with pytest.raises(JournalError) as e:
            attempt()
        msg = str(e.value)
        assert repr(path) in msg and "is not a flowing journal" in msg and "\n" not in msg
        assert "untouched" in msg
        assert (open(path, "rb").read(), os.stat(path).st_mtime_ns) == before
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_refusal_messages_say_what_to_do(tmp_path):
    path = str(tmp_path / "notes.txt")
    with open(path, "wb") as f:
        f.write(b"notes\n")
    with pytest.raises(JournalError, match="will not write to it .*choose another journal_path"):
        Journal.open(path, LOG)
    with pytest.raises(JournalError, match="will not compact it .*check the path"):
        compact(path, LOG)


def test_show_lists_a_journal_with_a_damaged_header_but_writers_refuse_it(jpath, caplog_w):
    with Journal.open(jpath, LOG) as j:
        j.record(K("a"), "a", [], 1)
    data = open(jpath, "rb").read().replace(b"flowing-journal", b"flowing-journaL", 1)
    with open(jpath, "wb") as f:
        f.write(data)
    assert [e.name for e in iter_entries(jpath, LOG)] == ["a"]  # read-only: lenient
    assert "line 1" in warnings_of(caplog_w)[0]
    with pytest.raises(JournalError, match="not a flowing journal"):
        Journal.open(jpath, LOG)
    assert open(jpath, "rb").read() == data


def test_a_journal_of_a_newer_format_is_refused_untouched(jpath):
    with open(jpath, "wb") as f:
        f.write(b'{"format":"flowing-journal","version":3}\n' + b'{"v":3,"anything":1}\n')
    before = _frozen(jpath)
    for attempt in (lambda: Journal.open(jpath, LOG), lambda: compact(jpath, LOG),
                    lambda: list(iter_entries(jpath, LOG))):
        with pytest.raises(JournalError, match="newer flowing .*version 3.*upgrade flowing"):
            attempt()
    assert (open(jpath, "rb").read(), os.stat(jpath).st_mtime_ns) == before


# --------------------------------------------------------------- symlinks

def test_a_symlink_at_the_journal_path_is_never_followed(tmp_path):
    real = str(tmp_path / "real.jsonl")
    with Journal.open(real, LOG) as j:
        j.record(K("a"), "a", [], 1)
    link = str(tmp_path / "run.jsonl")
    os.symlink(real, link)
    before = _frozen(real)
    for attempt in (lambda: Journal.open(link, LOG), lambda: compact(link, LOG),
                    lambda: forget(link, ["a"], LOG),
                    lambda: list(iter_entries(link, LOG))):
        with pytest.raises(JournalError, match="is a symbolic link; flowing does not follow"):
            attempt()
    assert (open(real, "rb").read(), os.stat(real).st_mtime_ns) == before
    assert os.path.islink(link)


def test_a_dangling_symlink_is_refused_and_nothing_is_created(tmp_path):
    target = tmp_path / "elsewhere" / "planted.jsonl"
    target.parent.mkdir()
    link = str(tmp_path / "run.jsonl")
    os.symlink(str(target), link)
    with pytest.raises(JournalError, match="symbolic link"):
        Journal.open(link, LOG)
    assert not target.exists() and os.listdir(target.parent) == []


def test_a_symlinked_directory_above_the_journal_is_fine(tmp_path):
    (tmp_path / "data").mkdir()
    os.symlink(str(tmp_path / "data"), str(tmp_path / "via"))
    with Journal.open(str(tmp_path / "via" / "run.jsonl"), LOG) as j:
        assert j.record(K("a"), "a", [], 1)
    assert (tmp_path / "data" / "run.jsonl").read_bytes().startswith(HEADER)


def test_a_symlink_swapped_in_while_open_is_not_written_through(tmp_path, caplog_w):
    path, other = str(tmp_path / "run.jsonl"), str(tmp_path / "victim.txt")
    with open(other, "wb") as f:
        f.write(b"precious\n")
    j = Journal.open(path, LOG)
    assert j.record(K("a"), "a", [], 1)
    os.rename(path, str(tmp_path / "moved.jsonl"))
    os.symlink(other, path)
    assert j.record(K("b"), "b", [], 2) is False
    j.close()
    assert open(other, "rb").read() == b"precious\n"
    (w,) = warnings_of(caplog_w)
    assert "symbolic link" in w and "disabled" in w


# ------------------------------------------------------ non-regular files

def _bounded(fn, seconds: float = 10):
    """Run fn in a thread; fail (instead of hanging) if it does not return in time."""
    out: list = []

    def run():
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} blocked"
    return out[0]


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = str(tmp_path / "run.jsonl")
    os.mkfifo(fifo)
    for fn in (lambda: Journal.open(fifo, LOG), lambda: list(iter_entries(fifo, LOG)),
               lambda: compact(fifo, LOG), lambda: forget(fifo, ["a"], LOG)):
        e = _bounded(fn)
        assert isinstance(e, JournalError) and "is a FIFO" in str(e), e


def test_a_device_is_refused(tmp_path):
    e = _bounded(lambda: Journal.open(os.devnull, LOG))
    assert isinstance(e, JournalError) and "character device" in str(e)


# -------------------------------------------- rewrites: mode, owner, temp files

@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o660, 0o400])
def test_compact_and_forget_keep_the_file_mode(jpath, mode):
    with Journal.open(jpath, LOG) as j:
        j.record(K("a"), "a", [], 1)
        j.record(K("a"), "a", [], 2)
        j.record(K("b"), "b", [], 3)
    os.chmod(jpath, mode)
    compact(jpath, LOG)
    assert stat.S_IMODE(os.stat(jpath).st_mode) == mode
    forget(jpath, ["b"], LOG)
    assert stat.S_IMODE(os.stat(jpath).st_mode) == mode
    assert os.stat(jpath).st_uid == os.geteuid()
    assert [e["name"] for e in lines(jpath)] == ["a"]


LEFTOVER = ".run.jsonl.0123456789abcdef.tmp"
NOT_OURS = [".run.jsonl.notes.tmp", ".run.jsonl.0123456789ABCDEF.tmp", ".run.jsonl.0123456789abcdef.tmp.bak",
            ".other.jsonl.0123456789abcdef.tmp", "run.jsonl.0123456789abcdef.tmp",
            ".run.jsonl.0123456789abcde.tmp", ".run.jsonl.x.0123456789abcdef.tmp"]


def _plant(tmp_path) -> None:
    for name in [LEFTOVER, *NOT_OURS]:
        (tmp_path / name).write_bytes(b"partial rewrite")
    (tmp_path / "target").write_bytes(b"keep")
    os.symlink(str(tmp_path / "target"), str(tmp_path / ".run.jsonl.fedcba9876543210.tmp"))


def _remaining(tmp_path) -> list[str]:
    return sorted(n for n in os.listdir(tmp_path) if n not in ("run.jsonl", "target"))


def test_open_removes_a_leftover_temp_file_and_nothing_else(tmp_path):
    path = str(tmp_path / "run.jsonl")
    Journal.open(path, LOG).close()
    _plant(tmp_path)
    Journal.open(path, LOG).close()
    assert _remaining(tmp_path) == sorted([*NOT_OURS, ".run.jsonl.fedcba9876543210.tmp"])
    assert (tmp_path / "target").read_bytes() == b"keep"


def test_compact_removes_a_leftover_temp_file_and_leaves_none_of_its_own(tmp_path):
    path = str(tmp_path / "run.jsonl")
    with Journal.open(path, LOG) as j:
        j.record(K("a"), "a", [], 1)
    _plant(tmp_path)
    compact(path, LOG)
    assert _remaining(tmp_path) == sorted([*NOT_OURS, ".run.jsonl.fedcba9876543210.tmp"])


def test_a_refused_file_keeps_its_neighbours(tmp_path):
    path = str(tmp_path / "run.jsonl")
    (tmp_path / "run.jsonl").write_bytes(b"not a journal\n")
    _plant(tmp_path)
    with pytest.raises(JournalError):
        Journal.open(path, LOG)
    assert LEFTOVER in os.listdir(tmp_path)


def test_a_failed_rewrite_removes_its_temp_file(jpath, monkeypatch, tmp_path):
    with Journal.open(jpath, LOG) as j:
        j.record(K("a"), "a", [], 1)
    before = open(jpath, "rb").read()

    def fail(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        compact(jpath, LOG)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["run.jsonl"] and open(jpath, "rb").read() == before


# --------------------------------------- lines with a valid checksum but odd fields

def _fields(**over: str) -> str:
    f = {"key": json.dumps(K("x")), "kind": '"task"', "name": '"x"', "deps": "[]",
         "t": "1763850000.0", "digest": "null", "inputs": "null", "enc": '"json"'}
    f.update(over)
    return ",".join(f'"{k}":{v}' for k, v in f.items() if v is not None)


ODD_LINES = {
    "t NaN": _fields(t="NaN"),
    "t Infinity": _fields(t="Infinity"),
    "t 1e999": _fields(t="1e999"),
    "t huge int": _fields(t="9" * 400),
    "t 1e300": _fields(t="1e300"),
    "t string": _fields(t='"yesterday"'),
    "t true": _fields(t="true"),
    "deps not a list": _fields(deps='"abc"'),
    "deps of ints": _fields(deps="[1,2]"),
    "name not a str": _fields(name="12"),
    "empty key": _fields(key='""'),
    "key not a str": _fields(key="[1]"),
    "digest a number": _fields(digest="5"),
    "inputs a list": _fields(inputs='["a"]'),
    "no digest field": _fields(digest=None),
    "unknown enc": _fields(enc='"zip"'),
    "unknown kind": _fields(kind='"' + "k" * 1000 + '"'),
    "deeply nested name": _fields(name="[" * 100_000 + "]" * 100_000),
    "duplicate fields": _fields() + ',"kind":"task"',
}


@pytest.mark.parametrize("fields", ODD_LINES.values(), ids=ODD_LINES.keys())
def test_lines_with_a_valid_checksum_but_odd_fields_are_skipped(jpath, caplog_w, fields):
    with Journal.open(jpath, LOG) as j:
        j.record(K("a"), "a", [], 1)
    with open(jpath, "ab") as f:
        f.write(make_line("", "", "1", fields=fields))
    with Journal.open(jpath, LOG) as j:
        if fields.endswith(',"kind":"task"'):  # JSON keeps the last of duplicate fields: valid
            assert j.get(K("x")).value == 1  # type: ignore[union-attr]
        else:
            assert K("x") not in j
            (w,) = warnings_of(caplog_w)
            assert "line 3" in w and len(w) < 400
        assert j.record(K("b"), "b", [], 2) and j.get(K("a")).value == 1  # type: ignore[union-attr]


def test_odd_but_valid_fields_are_read(jpath):
    with Journal.open(jpath, LOG) as j:
        j.record(K("a"), "a", [], 1)
    with open(jpath, "ab") as f:
        f.write(make_line("", "", "1", fields=_fields(t="-86400.5", key='"not hex \\u001b[31m"',
                                                      name='"\\u202eevil\\n"')))
    with Journal.open(jpath, LOG) as j:
        hit = j.get("not hex \x1b[31m")
        assert hit is not None and hit.t == -86400.5
        e = list(j.entries())[-1]
        assert e.name == "\u202eevil\n" and e.time == -86400.5


# ----- the fast header path reads exactly what the general JSON path reads ---------

from hypothesis import given as _given  # noqa: E402
from hypothesis import settings as _settings  # noqa: E402
from hypothesis import strategies as _st  # noqa: E402

_hex64 = _st.text("0123456789abcdef", min_size=64, max_size=64)


@_settings(max_examples=300, deadline=None)
@_given(key=_hex64, kind=_st.sampled_from(["task", "item", "override"]), name=_st.text(),
        deps=_st.lists(_hex64, max_size=3), t=_st.floats(0, 2e9),
        digest=_st.none() | _hex64, inputs=_st.none() | _hex64 | _st.just("*"),
        enc=_st.sampled_from(["json", "pickle", "none", "file", "gone"]),
        parts=_st.none() | _st.dictionaries(_st.text(), _st.text(max_size=12), max_size=3))
def test_fast_header_parse_equals_the_json_parse(key, kind, name, deps, t, digest, inputs, enc,
                                                 parts):
    import json as _json

    from flowing.journal import format as J

    line = J._make_line(key, kind, name, deps, t, enc, "null", digest, inputs, parts)[:-1]
    i = line.find(J._VALUE_TAG)
    general = _json.loads(b"{" + line[J._HEAD:i] + b"}")
    assert general.pop("parts", None) == (None if parts is None else
                                          {k: v for k, v in parts.items() if k != "value"})
    general["t"] = float(general["t"])
    general["v"] = 2
    general["parts"] = parts is not None  # the index only notes that the line has them
    hdr, vstart, problem = J._check(line, None, None)
    assert problem is None and vstart == i + len(J._VALUE_TAG)
    assert hdr == general
    fast = J._fast_header(line, i)
    assert fast is None or fast == general


_PLAIN_JSON = _st.recursive(
    _st.none() | _st.booleans() | _st.integers() | _st.floats(allow_nan=False, allow_infinity=False)
    | _st.text(),
    lambda inner: _st.lists(inner, max_size=8) | _st.dictionaries(_st.text(max_size=8), inner,
                                                                max_size=8),
    max_leaves=200)


@_given(_PLAIN_JSON)
@_settings(max_examples=300, deadline=None)
def test_small_json_values_skip_the_pickle_and_stay_below_the_store(v):
    """A value taken by the JSON fast path (no pickle first) is one the general
    path would also keep in its line as JSON: its pickle is far below the store's
    threshold, and its text reads back as the same value."""
    enc, text, big = jformat._encode_value(v)
    if jformat._small_plain_json(v, jformat._SMALL_JSON_NODES) >= 0:
        frame, bufs = valuestore.dumps(v)
        assert valuestore.pickled_size(frame, bufs) <= \
            valuestore.THRESHOLD // 2
        assert enc == "json" and big is None
    if enc == "json":
        back = json.loads(text)
        assert back == v and type(back) is type(v)


def test_json_fast_path_limits(jpath):
    """Non-plain, too many nodes, too long, non-finite: each takes the general path,
    whose outcome is unchanged (a big plain list still goes to the store)."""
    assert jformat._small_plain_json({1: 2}, 512) == -1            # non-str key
    assert jformat._small_plain_json([float("nan")], 512) == -1
    assert jformat._small_plain_json((1, 2), 512) == -1            # a tuple is pickled
    assert jformat._small_plain_json(list(range(600)), 512) == -1
    assert jformat._encode_value((1, 2))[0] == "pickle"
    assert jformat._encode_value("\U0001F600" * 5000)[0] == "json"
    assert jformat._encode_value(["x" * 1000 + str(i) for i in range(100)])[0] == "file"
    with Journal.open(jpath, LOG) as j:
        assert j.record(K("a"), "a[0]", [K("t")], {"i": 1, "sq": 1}, "item", durable=False)
    assert lines(jpath)[0]["value"] == {"i": 1, "sq": 1}
