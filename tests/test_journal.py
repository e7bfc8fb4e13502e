"""The durable journal: encoding, trust, corruption, concurrency, crashes."""

from __future__ import annotations

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

from flowing import journal as journal_mod  # noqa: E402
from flowing.journal import Journal, JournalError  # noqa: E402

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
    with open(path, "rb") as f:
        return [json.loads(line) for line in f]


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
    assert list(first)[:2] == ["v", "crc"] and list(first)[-1] == "value"
    assert first["v"] == 1 and first["key"] == K("a") and first["name"] == "a"
    assert abs(first["t"] - time.time()) < 60
    assert [(e.name, e.kind, e.dep_keys) for e in got] == [
        ("a", "task", ()), ("b[0]", "item", (K("a"),)), ("c", "override", (K("a"), K("b")))]
    assert got[1].task == "b" and got[2].preview == "3"
    assert got[0].offset == 0 and got[1].offset == got[0].size


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


def test_large_values_longer_than_the_read_buffers(jpath, caplog_w):
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
    assert "line 1" in w and "checksum" in w


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
    marker = json.loads(open(jpath, encoding="utf-8").readline())
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
    unknown_kind = journal_mod._make_line(K("k"), "sometask", "k", [], 1.0, "json", "1")
    future = b'{"v":2,"crc":"00000000","key":"%s","kind":"task","value":1}\n' % K("f").encode()
    with open(jpath, "ab") as f:
        f.write(b"this is not json\n")
        f.write(future)
        f.write(b"\n")  # blank lines are ignored silently
        f.write(unknown_kind)
        f.write(journal_mod._make_line(K("c"), "task", "c", [], 1.0, "json", "3"))
        f.write(journal_mod._make_line(K("d"), "task", "d", [], 1.0, "json", "4")[:50])  # torn
    with Journal.open(jpath, LOG) as j:
        assert j.lookup(K("a")) == (True, 1)
        assert j.lookup(K("b")) == (True, (2,))
        assert j.lookup(K("c")) == (True, 3)
        for k in ("k", "f", "d"):
            assert K(k) not in j
    ws = warnings_of(caplog_w)
    assert len(ws) == 4
    assert "line 3" in ws[0] and "corrupt" in ws[0]
    assert "line 4" in ws[1] and "version 2" in ws[1]
    assert "line 6" in ws[2] and "unknown entry kind 'sometask'" in ws[2]
    assert "line 8" in ws[3] and "torn" in ws[3]


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
        f.write(b"junk\n" * 100)
    with Journal.open(jpath, LOG) as j:
        assert len(j) == 0
    ws = warnings_of(caplog_w)
    assert len(ws) == journal_mod._MAX_LINE_WARNINGS + 1
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
    journal_mod.compact(jpath, LOG)
    assert os.stat(jpath).st_ino != before
    assert a.record(K("z"), "z", [], 4)  # lands in the new file, index rebuilt
    assert a.lookup(K("x")) == (True, 2) and a.lookup(K("z")) == (True, 4)
    journal_mod.forget(jpath, ["y"], LOG)
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
    complete = data.count(b"\n")
    torn = not data.endswith(b"\n")
    assert complete >= 2
    with Journal.open(jpath, LOG) as j:
        assert len(j) == complete  # every finished line is there
        ws = warnings_of(caplog_w)
        assert len(ws) == (1 if torn else 0)
        if torn:
            assert "torn" in ws[0] and f"line {complete + 1}" in ws[0]
        # the next writer carries on cleanly after the torn tail
        assert j.record(K("after"), "after", [], 1)
    caplog_w.clear()
    with Journal.open(jpath, LOG) as j:
        assert len(j) == complete + 1
    assert warnings_of(caplog_w) == []
