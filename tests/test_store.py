"""Big values stored beside the journal, lazy replay, value checks, group commit.

Every journal case is two (or more) runs in fresh processes over one journal.
The pipeline script below prints one ``OUT {json}`` line per run: what ran,
what was replayed, and which stored values were read (``flowing.journal.values.load``
is counted, so "nothing unneeded is loaded" is observed, not assumed).
"""

from __future__ import annotations

import binascii
import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from flowing.journal import values as valuestore
from flowing.journal.format import HEADER
from flowing.journal.rewrite import compact, forget
from flowing.journal.scan import iter_entries
from flowing.journal.store import Journal
from flowing.keys.digest import value_digest

PIPELINE = '''
import json, os, sys
import numpy as np
from flowing import Flow, task
from flowing.journal import values as valuestore

loads = []
_load = valuestore.load
def counted(path, sha, size):
    loads.append(size)
    return _load(path, sha, size)
valuestore.load = counted

N = int(os.environ.get("N", "1000000"))
VERSION = os.environ.get("VERSION", "1")

def mark(name):
    with open("calls.log", "a") as f:
        f.write(name + "\\n")

@task
def load():
    mark("load")
    return np.arange(N, dtype=np.float64)

@task(depends_on=[load])
def transform(load):
    mark("transform")
    return load * 2.0

@task(depends_on=[transform], version=VERSION)
def summarize(transform):
    mark("summarize")
    transform[0] += 0.0      # a replayed array must be writeable
    return float(transform.sum())

flow = Flow(summarize, journal_path="run.jsonl", log=False)
res = flow.run()
want = os.environ.get("WANT")
extra = {}
if want:
    try:
        v = flow.value(want)
        extra = {"want_sum": float(v.sum()), "writeable": bool(v.flags.writeable)}
    except Exception as e:
        extra = {"want_error": f"{type(e).__name__}: {e}"}
print("OUT " + json.dumps({
    "state": {n: r.state.value for n, r in res.items()},
    "cached": {n: r.cached for n, r in res.items()},
    "error": {n: str(r.error) for n, r in res.items() if r.error is not None},
    "summary": res["summarize"].value if res["summarize"].ok else None,
    "loads": loads, **extra}), flush=True)
'''


class Pipeline:
    def __init__(self, path, env) -> None:
        self.path = path
        self.env = env
        (path / "flow.py").write_text(PIPELINE)

    def run(self, **env: str) -> dict:
        e = dict(self.env)
        e.update(env)
        p = subprocess.run([sys.executable, "flow.py"], cwd=self.path, env=e, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
        log = self.path / "calls.log"
        calls = log.read_text().split() if log.exists() else []
        if log.exists():
            log.unlink()
        out = json.loads(next(x for x in p.stdout.splitlines() if x.startswith("OUT "))[4:])
        out["ran"] = sorted(calls)
        out["stderr"] = p.stderr
        return out

    @property
    def journal(self) -> str:
        return str(self.path / "run.jsonl")

    @property
    def store(self):
        return self.path / ("run.jsonl" + valuestore.SUFFIX)

    def stored(self) -> dict[str, str]:
        """task name -> path of its stored value file."""
        import logging

        return {e.name: str(self.store / f"{e.stored}.pkl")
                for e in iter_entries(self.journal, logging.getLogger("t")) if e.stored}


@pytest.fixture
def pipe(tmp_path, repo_env):
    pytest.importorskip("numpy")
    return Pipeline(tmp_path, repo_env)


def run_script(path, env) -> str:
    """Run ``f.py`` in ``path`` in a fresh process; its stdout, stripped."""
    p = subprocess.run([sys.executable, "f.py"], cwd=path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout.strip()


def for_each_script(n: int, effect: str, result: str) -> str:
    """A journaled flow of ``n`` for_each items (each runs ``effect``, returns ``result``)
    printing ``OUT <cached> <sum or length of the values> <number of items>``."""
    return textwrap.dedent(f'''
        from flowing import Flow, task

        @task
        def src():
            return list(range({n}))

        @task(depends_on=[src], for_each="src")
        def sq(src):
            {effect}
            return {result}

        r = Flow(sq, journal_path="run.jsonl", log=False).run()["sq"]
        total = sum(r.value) if isinstance(r.value[0], int) else len(r.value)
        print("OUT", r.cached, total, len(r.items))
    ''')


def expected_sum(n: int = 1_000_000) -> float:
    return float(n * (n - 1))  # sum of 2*i for i < n


def test_big_values_go_beside_the_journal_and_nothing_unneeded_is_read_on_replay(pipe):
    first = pipe.run()
    assert first["ran"] == ["load", "summarize", "transform"] and first["loads"] == []
    assert first["summary"] == expected_sum()
    files = pipe.stored()
    assert set(files) == {"load", "transform"}  # 8 MB arrays: stored; the float stays in the line
    st = os.stat(pipe.store)
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in files.values())
    assert b"sha256" in open(pipe.journal, "rb").read() and os.path.getsize(pipe.journal) < 4096

    again = pipe.run()  # a fresh process: everything replays, no stored value is read
    assert again["ran"] == [] and all(again["cached"].values()) and again["loads"] == []
    assert again["summary"] == expected_sum()

    # A dependent that must run reads its dependency (one file), not the one upstream of it.
    edited = pipe.run(VERSION="2")
    assert edited["ran"] == ["summarize"] and edited["summary"] == expected_sum()
    assert edited["loads"] == [os.path.getsize(files["transform"])]


def test_replayed_arrays_come_back_equal_and_writeable(pipe):
    pipe.run()
    out = pipe.run(WANT="load")
    assert out["ran"] == [] and out["want_sum"] == float(sum(range(1_000_000)))
    assert out["writeable"] is True


def test_replayed_frames_come_back_equal_and_writeable(tmp_path, repo_env):
    pytest.importorskip("pandas")
    script = textwrap.dedent('''
        import sys
        import numpy as np, pandas as pd
        from flowing import Flow, task

        @task
        def frame():
            open("calls.log", "a").write("frame\\n")
            rng = np.random.default_rng(1)
            return pd.DataFrame({"a": rng.random(50_000), "b": np.arange(50_000),
                                 "c": [f"s{i}" for i in range(50_000)]})

        flow = Flow(frame, journal_path="run.jsonl", log=False)
        r = flow.run()["frame"]
        df = flow.value("frame")
        df.loc[0, "a"] = 5.0
        df.loc[1, "a"] = 6.0
        df.iloc[2, 1] = -1
        rng = np.random.default_rng(1)
        want = pd.DataFrame({"a": rng.random(50_000), "b": np.arange(50_000),
                             "c": [f"s{i}" for i in range(50_000)]})
        want.loc[0, "a"] = 5.0
        want.loc[1, "a"] = 6.0
        want.iloc[2, 1] = -1
        pd.testing.assert_frame_equal(df, want)
        print("CACHED", r.cached)
    ''')
    (tmp_path / "f.py").write_text(script)
    assert [run_script(tmp_path, repo_env) for _ in range(2)] == ["CACHED False", "CACHED True"]
    assert (tmp_path / "calls.log").read_text().split() == ["frame"]


@pytest.mark.parametrize("where", ["magic", "lengths", "frame", "buffer", "last"])
def test_a_flipped_byte_in_a_stored_file_is_never_replayed(pipe, where):
    pipe.run()
    f = pipe.stored()["transform"]
    size = os.path.getsize(f)
    at = {"magic": 0, "lengths": 21, "frame": 40, "buffer": size // 2, "last": size - 1}[where]
    with open(f, "r+b") as fh:
        fh.seek(at)
        b = fh.read(1)
        fh.seek(at)
        fh.write(bytes([b[0] ^ 0x01]))
    # The damage is found when the value is needed: the task needing it fails, naming it.
    bad = pipe.run(VERSION="2")
    assert bad["state"]["summarize"] == "failed" and bad["ran"] == []
    assert "transform" in bad["error"]["summarize"] and "next run" in bad["error"]["summarize"]
    assert "could not be loaded" in bad["stderr"]
    # ... and is never replayed again: the next run recomputes it.
    good = pipe.run(VERSION="2")
    assert good["ran"] == ["summarize", "transform"] and good["summary"] == expected_sum()
    assert good["state"]["summarize"] == "succeeded"


def test_a_missing_stored_file_makes_its_task_run_again(pipe):
    pipe.run()
    os.unlink(pipe.stored()["transform"])
    out = pipe.run(WANT="transform")
    # checked (cheaply) at replay: transform runs again, its dependent replays (same value)
    assert out["ran"] == ["transform"] and out["want_sum"] == expected_sum()
    assert "stored value file is missing" in out["stderr"]


@pytest.mark.parametrize("what", ["folder", "file"])
def test_a_group_writable_store_is_not_trusted(pipe, what):
    pipe.run()
    target = pipe.store if what == "folder" else pipe.stored()["load"]
    os.chmod(target, 0o770 if what == "folder" else 0o660)
    out = pipe.run(WANT="load")
    assert "writable by group or others" in out["stderr"]
    assert "load" in out["ran"] and out["want_sum"] == float(sum(range(1_000_000)))


def test_flow_value_of_a_damaged_stored_value_raises_and_the_next_run_recomputes(pipe):
    pipe.run()
    f = pipe.stored()["load"]
    with open(f, "r+b") as fh:
        fh.seek(os.path.getsize(f) - 8)
        fh.write(b"\x00" * 8)
    out = pipe.run(WANT="load")
    assert out["ran"] == [] and out["want_error"].startswith("ValueUnavailable: task 'load'")
    assert "'load'" in out["want_error"] and "next run" in out["want_error"]
    again = pipe.run(WANT="load")
    assert again["ran"] == ["load"] and again["want_sum"] == float(sum(range(1_000_000)))


def test_forget_and_compact_give_back_the_space_of_stored_values(pipe):
    import logging

    log = logging.getLogger("t")
    pipe.run()
    pipe.run(N="1000")  # new values, small enough for the line; the old files are stale now
    assert len(pipe.stored()) == 2 and len(os.listdir(pipe.store)) == 2
    r = compact(pipe.journal, log)
    assert r.values_freed == 0  # compact keeps the latest entry per key: the keys differ
    f = forget(pipe.journal, ["load"], log)
    assert f.values_freed > 16_000_000  # both 8 MB arrays: nothing refers to them any more
    assert os.listdir(pipe.store) == [] and not pipe.stored()


def test_compact_drops_values_superseded_under_the_same_key(tmp_path):
    import logging

    log = logging.getLogger("t")
    path = str(tmp_path / "run.jsonl")
    k = "a" * 64
    with Journal.open(path, log) as j:
        assert j.record(k, "t", [], b"x" * 200_000, digest=value_digest(b"x" * 200_000))
        assert j.record(k, "t", [], b"y" * 200_000, digest=value_digest(b"y" * 200_000))
    store = path + valuestore.SUFFIX
    assert len(os.listdir(store)) == 2
    r = compact(path, log)
    assert r.values_freed > 200_000 and len(os.listdir(store)) == 1
    with Journal.open(path, log) as j:
        assert j.get(k).value == b"y" * 200_000  # type: ignore[union-attr]


def test_journal_show_lists_stored_value_sizes(pipe):
    pipe.run()
    p = subprocess.run([sys.executable, "-m", "flowing", "journal", "show", "run.jsonl"],
                       cwd=pipe.path, env=pipe.env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "<stored value, 7.6 MiB>" in p.stdout
    assert "2 stored values, 15.3 MiB beside it" in p.stdout


# ------------------------------------------------------------ point 11: edited values

def _fix_crc(line: bytes) -> bytes:
    rest = line[len(b'{"v":2,"crc":"') + 10:]
    return b'{"v":2,"crc":"%08x",%s' % (binascii.crc32(rest), rest)


def test_a_hand_edited_value_with_its_checksum_fixed_is_not_replayed(tmp_path, repo_env):
    script = textwrap.dedent('''
        from flowing import Flow, task

        @task
        def base():
            open("calls.log", "a").write("base\\n")
            return {"n": 1}

        @task(depends_on=[base])
        def plus(base):
            open("calls.log", "a").write("plus\\n")
            return base["n"] + 10

        flow = Flow(plus, journal_path="run.jsonl", log=False)
        print("VALUES", flow.run()["base"].value, flow.value("plus"))
    ''')
    (tmp_path / "f.py").write_text(script)

    def run() -> tuple[str, list[str]]:
        p = subprocess.run([sys.executable, "f.py"], cwd=tmp_path, env=repo_env,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        log = tmp_path / "calls.log"
        calls = log.read_text().split() if log.exists() else []
        if log.exists():
            log.unlink()
        return p.stdout.strip(), calls

    assert run() == ("VALUES {'n': 1} 11", ["base", "plus"])
    path = tmp_path / "run.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    i = next(i for i, x in enumerate(lines) if b'"name":"base"' in x)
    lines[i] = _fix_crc(lines[i].replace(b'"value":{"n":1}', b'"value":{"n":5}').rstrip(b"\n")) + b"\n"
    path.write_bytes(b"".join(lines))
    out, calls = run()
    assert calls == ["base"] and out == "VALUES {'n': 1} 11"  # re-ran; plus replays (same value)


# ------------------------------------------------------------------ kill -9 mid-write

KILLED_WRITER = '''
import logging, sys
import numpy as np
from flowing.keys.digest import value_digest
from flowing.journal.store import Journal
j = Journal.open(sys.argv[1], logging.getLogger("w"))
a = np.full(int(sys.argv[2]), 7, dtype=np.uint8)
print("START", flush=True)
j.record("a" * 64, "big", [], a)
print("DONE", flush=True)
'''


def test_kill_9_during_a_300_mb_write_never_replays_a_torn_value(tmp_path, repo_env):
    pytest.importorskip("numpy")
    (tmp_path / "w.py").write_text(KILLED_WRITER)
    path = str(tmp_path / "run.jsonl")
    size = 300 << 20
    rng = random.Random()
    outcomes = set()
    for delay in [0.0, 0.05] + [rng.uniform(0.05, 1.5) for _ in range(3)]:
        if os.path.exists(path):
            os.unlink(path)
        p = subprocess.Popen([sys.executable, "w.py", path, str(size)], cwd=tmp_path,
                             env=repo_env, stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdout.readline().strip() == "START"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        import logging

        with Journal.open(path, logging.getLogger("t")) as j:
            hit = j.get("a" * 64)
            if hit is None:
                outcomes.add("absent")
            else:
                v = hit.value
                assert v.shape == (size,) and bool((v == 7).all())
                outcomes.add("whole")
                del v, hit
        store = path + valuestore.SUFFIX
        # leftovers of the killed write are removed by the next opener
        if os.path.isdir(store):
            assert [n for n in os.listdir(store) if n.endswith(".tmp")] == [], delay
    assert "absent" in outcomes


# ------------------------------------------------------------------ group commit

def test_held_item_lines_are_written_by_flush_and_close(tmp_path):
    import logging

    path = str(tmp_path / "run.jsonl")
    j = Journal.open(path, logging.getLogger("t"))
    keys = [f"{i:064x}" for i in range(50)]
    for k in keys:
        assert j.record(k, "t[0]", [], 1, "item", digest=value_digest(1), durable=False)
    assert open(path, "rb").read() == HEADER  # held: one write for all of them
    assert j.flush()
    assert open(path, "rb").read().count(b"\n") == 51 and all(k in j for k in keys)
    assert j.record("f" * 64, "t[1]", [], 2, "item", durable=False)
    j.close()
    with Journal.open(path, logging.getLogger("t")) as j2:
        assert "f" * 64 in j2


def test_a_journaled_for_each_run_writes_each_item_once(tmp_path, repo_env):
    (tmp_path / "f.py").write_text(for_each_script(300, 'open("calls.log", "a").write("x\\n")',
                                                   "src * src"))
    outs = [run_script(tmp_path, repo_env) for _ in range(2)]
    want = sum(i * i for i in range(300))
    assert outs == [f"OUT False {want} 300", f"OUT True {want} 300"]
    assert len((tmp_path / "calls.log").read_text().split()) == 300
    entries = [json.loads(x) for x in (tmp_path / "run.jsonl").read_bytes().splitlines()[1:]]
    assert sum(e["kind"] == "item" for e in entries) == 300


# ------------------------------------------------------------------ the persisted index

def _big_journal(path: str, n: int = 24) -> dict[str, str]:
    """A journal over 1 MiB (so it gets an index): key -> value."""
    import logging

    values = {f"{i:064x}": f"{i}:" + "v" * 60_000 for i in range(n)}
    with Journal.open(path, logging.getLogger("t")) as j:
        for k, v in values.items():
            assert j.record(k, "t" + k[-2:], [], v, digest=value_digest(v))
    return values


def _db(path: str) -> str:
    from flowing.journal import index as journalindex

    return os.path.join(path + valuestore.SUFFIX, journalindex.DB_NAME)


def test_a_big_journal_is_indexed_and_later_lines_are_read_from_the_tail(tmp_path, repo_env):
    import logging

    log = logging.getLogger("t")
    path = str(tmp_path / "run.jsonl")
    values = _big_journal(path)
    with Journal.open(path, log) as j:  # builds the index
        assert len(j) == len(values) and j.has_task("t01")
    assert os.path.isfile(_db(path)) and stat.S_IMODE(os.stat(_db(path)).st_mode) == 0o600
    # another process appends (and gone-marks nothing): the next opener reads only the tail
    code = ("import logging, sys; from flowing.journal.store import Journal; "
            "j = Journal.open(sys.argv[1], logging.getLogger()); "
            "j.record('e' * 64, 'late', [], 'late value'); j.close()")
    subprocess.run([sys.executable, "-c", code, path], env=repo_env, check=True, timeout=60)
    with Journal.open(path, log) as j:
        assert j.get("e" * 64).value == "late value" and j.has_task("late")  # type: ignore[union-attr]
        for k, v in values.items():
            assert j.get(k).value == v  # type: ignore[union-attr]
        assert len(j) == len(values) + 1


def test_a_forged_or_stale_index_never_replays_a_wrong_value(tmp_path):
    import logging
    import sqlite3

    log = logging.getLogger("t")
    path = str(tmp_path / "run.jsonl")
    values = _big_journal(path)
    Journal.open(path, log).close()
    keys = sorted(values)
    db = sqlite3.connect(_db(path))
    a, b = keys[0], keys[1]
    row_b = db.execute("SELECT off, len, vstart, code, t, digest, inputs FROM entries WHERE key=?",
                       (b,)).fetchone()
    db.execute("UPDATE entries SET off=?, len=?, vstart=?, code=?, t=?, digest=?, inputs=? "
               "WHERE key=?", (*row_b, a))  # a's row now points at b's line
    db.commit()
    db.close()
    with Journal.open(path, log) as j:
        assert j.get(a) is None  # refused: the line is not a's
        assert j.get(b).value == values[b]  # type: ignore[union-attr]


@pytest.mark.parametrize("damage", ["removed", "garbage", "group-writable", "compacted"])
def test_a_missing_damaged_untrusted_or_outdated_index_is_rebuilt_or_ignored(tmp_path, damage):
    import logging

    log = logging.getLogger("t")
    path = str(tmp_path / "run.jsonl")
    values = _big_journal(path)
    Journal.open(path, log).close()
    if damage == "removed":
        os.unlink(_db(path))
    elif damage == "garbage":
        with open(_db(path), "r+b") as f:
            f.write(b"not a database at all" * 10)
    elif damage == "group-writable":
        os.chmod(_db(path), 0o660)
    else:
        compact(path, log)
    with Journal.open(path, log) as j:
        assert len(j) == len(values)
        for k, v in values.items():
            assert j.get(k).value == v  # type: ignore[union-attr]


def test_without_sqlite3_the_index_stays_in_memory(tmp_path, monkeypatch):
    import logging

    from flowing.journal import index as journalindex

    monkeypatch.setattr(journalindex, "sqlite3", None)
    path = str(tmp_path / "run.jsonl")
    values = _big_journal(path)
    with Journal.open(path, logging.getLogger("t")) as j:
        assert len(j) == len(values) and j.get(sorted(values)[3]).value  # type: ignore[union-attr]
    assert not os.path.exists(_db(path))


def test_a_damaged_index_is_replaced(tmp_path):
    import logging

    log = logging.getLogger("t")
    path = str(tmp_path / "run.jsonl")
    _big_journal(path)
    Journal.open(path, log).close()
    with open(_db(path), "r+b") as f:
        f.write(b"not a database at all" * 10)
    Journal.open(path, log).close()
    with open(_db(path), "rb") as f:
        assert f.read(16) == b"SQLite format 3\x00"


def test_a_run_that_writes_a_big_journal_leaves_its_index_for_the_next_open(tmp_path, repo_env):
    (tmp_path / "f.py").write_text(for_each_script(4000, "pass", '"p" * 300'))
    assert run_script(tmp_path, repo_env).startswith("OUT False")
    assert os.path.getsize(tmp_path / "run.jsonl") > 1 << 20
    assert os.path.isfile(_db(str(tmp_path / "run.jsonl")))  # saved by the run
    assert run_script(tmp_path, repo_env).startswith("OUT True")


def test_lines_held_by_many_threads_at_once_are_each_written_once_in_each_threads_order(tmp_path):
    """Workers hold item lines without a lock while others write durable lines:
    after ``flush`` every line is in the file once, whole, indexed, and the lines
    of each thread are in the order it held them."""
    import logging
    import threading

    path = str(tmp_path / "run.jsonl")
    j = Journal.open(path, logging.getLogger("t"))
    threads, per = 6, 400
    start = threading.Barrier(threads)

    def writer(t: int) -> None:
        start.wait()
        for i in range(per):
            key = f"{t:032x}{i:032x}"
            durable = t == 0 and i % 50 == 0  # one thread also writes durable lines
            assert j.record(key, f"t{t}[{i}]", [], [t, i], "item", durable=durable)

    pool = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert j.flush()
    j.close()
    entries = list(iter_entries(path, logging.getLogger("t")))
    assert len(entries) == threads * per
    seen: dict[int, list[int]] = {t: [] for t in range(threads)}
    for e in entries:
        t, i = (int(e.key[:32], 16), int(e.key[32:], 16))
        seen[t].append(i)
    assert all(seen[t] == list(range(per)) for t in range(threads))
    with Journal.open(path, logging.getLogger("t")) as again:
        assert again.lookup(f"{5:032x}{399:032x}") == (True, [5, 399])


def test_held_lines_go_out_with_the_next_line_once_they_waited_long_enough(tmp_path):
    """Held item lines are not kept past the time limit when items keep coming:
    the first line held after it passes writes them all (no flush needed)."""
    import logging

    from flowing.journal import commit

    path = str(tmp_path / "run.jsonl")
    with Journal.open(path, logging.getLogger("t")) as j:
        assert j.record("a" * 64, "t[0]", [], 0, "item", durable=False)
        assert open(path, "rb").read() == HEADER
        time.sleep(commit._PENDING_S + 0.05)
        assert j.record("b" * 64, "t[1]", [], 1, "item", durable=False)
        assert open(path, "rb").read().count(b"\n") == 3


def test_item_lines_name_only_their_task_and_its_marker_holds_what_they_share(tmp_path, repo_env):
    """What a task's items share (dependency keys, the key's parts) is written once,
    in a value-less task line before the first item; each item line names only the
    task's key, has no inputs digest, and a JSON value no digest (the CRC covers it);
    a value that is not JSON keeps its digest. Everything replays."""
    (tmp_path / "f.py").write_text(for_each_script(
        40, 'open("calls.log", "a").write(f"{src}\\n")', "src * 2 if src % 2 else (src, src)"))
    out = run_script(tmp_path, repo_env)
    assert out == "OUT False 40 40"
    entries = [json.loads(x) for x in (tmp_path / "run.jsonl").read_bytes().splitlines()[1:]]
    src, marker = entries[0], entries[1]
    items = [e for e in entries if e["kind"] == "item"]
    assert src["name"] == "src" and marker["name"] == "sq" and marker["kind"] == "task"
    assert marker["enc"] == "none" and marker["deps"] == [src["key"]] and marker["parts"]
    assert len(items) == 40 and entries.index(items[0]) == 2
    assert all(e["deps"] == [marker["key"]] and e["inputs"] is None for e in items)
    by_value = {json.dumps(e["value"]): e for e in items}
    assert by_value["6"]["enc"] == "json" and by_value["6"]["digest"] is None
    pickled = [e for e in items if e["enc"] == "pickle"]
    assert len(pickled) == 20 and all(e["digest"] for e in pickled)
    last = entries[-1]
    assert last["kind"] == "task" and last["key"] == marker["key"] and last["enc"] == "pickle"
    assert run_script(tmp_path, repo_env) == "OUT True 40 40"
    # without the task's list, the items replay one by one
    assert forget(str(tmp_path / "run.jsonl"), ["sq[3]"], _log()).removed == 3
    (tmp_path / "calls.log").unlink()
    assert run_script(tmp_path, repo_env) == "OUT False 40 40"
    assert (tmp_path / "calls.log").read_text().split() == ["3"]


def _log():
    import logging

    return logging.getLogger("t")


def test_forget_reaches_the_items_a_killed_run_left_behind(tmp_path, repo_env):
    """kill -9 in the middle of a fan-out (the task's own line never written): the
    items already written are still downstream of the source for ``journal forget``
    (through the task's marker), so forgetting the source re-runs every item."""
    body = textwrap.dedent('''
        import os, signal, sys, time
        from flowing import Flow, task

        @task
        def src():
            return list(range(30))

        @task(depends_on=[src], for_each="src")
        def sq(src):
            time.sleep(0.02)
            if src == 25 and not os.path.exists("survived"):
                time.sleep(0.5)
                os.kill(os.getpid(), signal.SIGKILL)
            open("calls.log", "a").write(f"{src}\\n")
            return src * src

        r = Flow(sq, journal_path="run.jsonl", log=False, max_workers=1).run()["sq"]
        print("OUT", r.cached, sum(r.value), len(r.items))
    ''')
    (tmp_path / "f.py").write_text(body)
    p = subprocess.run([sys.executable, "f.py"], cwd=tmp_path, env=repo_env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL
    path = str(tmp_path / "run.jsonl")
    written = [e for e in iter_entries(path, _log()) if e.kind == "item"]
    assert written, "the held lines passed their time limit before the kill"
    assert not [e for e in iter_entries(path, _log()) if e.name == "sq" and e.enc != "none"]
    assert forget(path, ["src"], _log()).removed >= len(written) + 2
    assert [e for e in iter_entries(path, _log())] == []
    (tmp_path / "survived").touch()
    (tmp_path / "calls.log").unlink()
    want = sum(i * i for i in range(30))
    assert run_script(tmp_path, repo_env) == f"OUT False {want} 30"
    assert sorted(map(int, (tmp_path / "calls.log").read_text().split())) == list(range(30))


def test_an_index_of_another_schema_version_is_rebuilt_in_the_current_one(tmp_path):
    """An index written by another flowing version (other tables) is dropped and made
    again; lookups read the journal as before."""
    import logging
    import sqlite3

    from flowing.journal import index as journalindex

    path = str(tmp_path / "run.jsonl")
    values = _big_journal(path)
    with Journal.open(path, logging.getLogger("t")) as j:
        j.checkpoint()
    db = sqlite3.connect(_db(path))
    db.execute("UPDATE meta SET version = 3")
    db.commit()
    db.close()
    with Journal.open(path, logging.getLogger("t")) as j:
        assert all(j.lookup(k) == (True, v) for k, v in values.items())
        j.checkpoint()
    db = sqlite3.connect(_db(path))
    assert db.execute("SELECT version FROM meta").fetchone()[0] == journalindex.SCHEMA_VERSION
    sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'entries'").fetchone()[0]
    assert "WITHOUT ROWID" in sql and db.execute("SELECT count(*) FROM entries").fetchone()[0] \
        == len(values)
    db.close()


def test_forgetting_one_item_keeps_its_siblings_downstream_of_the_source(tmp_path, repo_env):
    """``forget sq[3]`` takes the task's lines (else the task replays whole and the
    item never runs): its other items must stay reachable, so a later ``forget src``
    still makes every item run again."""
    (tmp_path / "f.py").write_text(for_each_script(
        6, 'open("calls.log", "a").write(f"{src}\\n")', "src * src"))
    want = sum(i * i for i in range(6))
    assert run_script(tmp_path, repo_env) == f"OUT False {want} 6"
    path = str(tmp_path / "run.jsonl")
    forget(path, ["sq[3]"], _log())
    forget(path, ["src"], _log())
    assert [e.name for e in iter_entries(path, _log())] == []
    (tmp_path / "calls.log").unlink()
    assert run_script(tmp_path, repo_env) == f"OUT False {want} 6"
    assert sorted(map(int, (tmp_path / "calls.log").read_text().split())) == list(range(6))


def test_flush_waits_for_the_fsync_of_lines_another_writer_took(tmp_path):
    """Held lines taken by another writer and still in its fsync are not durable yet:
    ``flush`` returns only once that fsync is done."""
    import logging
    import threading

    from flowing.journal.commit import GroupCommit

    in_fsync, release = threading.Event(), threading.Event()
    synced = []

    def fsync() -> None:
        in_fsync.set()
        release.wait(10)
        synced.append(True)

    commit = GroupCommit(lambda lines: None, fsync, logging.getLogger("t"), "x")
    entry = ("k" * 64, "item", "t[0]", "json", 0.0, None, None, 0, False)
    assert commit.write(b"held\n", entry, durable=False)
    writer = threading.Thread(target=commit.write, args=(b"task\n", entry))
    writer.start()
    assert in_fsync.wait(10)
    flushed = []
    flusher = threading.Thread(target=lambda: flushed.append(commit.flush()))
    flusher.start()
    flusher.join(0.3)
    assert flushed == [], "flush returned while the lines were still being fsynced"
    release.set()
    flusher.join(10)
    writer.join(10)
    assert flushed == [True] and synced


def test_clean_never_removes_a_writers_copy_renamed_onto_an_unneeded_file(tmp_path, monkeypatch):
    """The interleaving that matters: ``clean`` locks an unneeded stored file, and
    before it removes it a writer storing the same content renames its own locked
    file onto that name (content addressed). The writer's file survives; the old
    one goes."""
    journal = str(tmp_path / "run.jsonl")
    with open(journal, "w") as f:
        f.write("")
    os.chmod(journal, 0o600)
    st = os.stat(journal)
    frame, bufs = valuestore.dumps(b"z" * 200_000)
    sha, size, held = valuestore.write(journal, st, frame, bufs)
    os.close(held)  # an unneeded file: no entry names it
    real_flock = valuestore.fcntl.flock
    writer: list[int] = []

    class Interleaved:
        LOCK_EX, LOCK_NB = valuestore.fcntl.LOCK_EX, valuestore.fcntl.LOCK_NB

        @staticmethod
        def flock(fd, how):
            real_flock(fd, how)
            if how & valuestore.fcntl.LOCK_NB and not writer:  # clean has locked the old file
                writer.append(valuestore.write(journal, st, frame, bufs)[2])

    monkeypatch.setattr(valuestore, "fcntl", Interleaved)
    removed, _ = valuestore.clean(journal, keep=set())
    monkeypatch.undo()
    path = os.path.join(valuestore.store_dir(journal), valuestore.file_name(sha))
    assert writer and removed == 0
    assert os.stat(path).st_ino == os.fstat(writer[0]).st_ino  # the writer's own file
    assert valuestore.check(journal, sha, size) is None
    os.close(writer[0])
    assert valuestore.clean(journal, keep=set())[0] == 1  # once its writer is done: unneeded
    assert not os.listdir(valuestore.store_dir(journal))


@pytest.mark.parametrize("rewrite", ["compact", "forget"])
def test_a_rewrite_keeps_the_new_file_locked_until_its_clean_is_done(tmp_path, monkeypatch, rewrite):
    """The interleaving that matters: a writer whose descriptor names a file two
    rewrites old locks it at once (nobody holds it), follows the path to the file
    the running rewrite has just renamed in and appends there. If that file were
    not locked until the rewrite's ``clean`` is done, the writer's line could land
    while ``clean`` still works from the list of values it read before: the
    writer's value, unlocked once its line is written, would be removed as unneeded
    and its entry would not load. The writer must wait for the rewrite instead."""
    import logging
    import threading

    from flowing.journal import rewrite as rewrite_mod

    path = str(tmp_path / "run.jsonl")
    log = logging.getLogger("test_store.rewrite_lock")
    big = b"v" * (valuestore.THRESHOLD * 2)
    writer = Journal.open(path, log)
    assert writer.record("a" * 64, "old", [], big)
    assert writer.record("b" * 64, "gone", [], 1)
    compact(path, log)                      # the writer's descriptor is now one file behind
    real_clean = valuestore.clean
    in_clean, go_on = threading.Event(), threading.Event()

    def paused_clean(abspath, keep):
        in_clean.set()
        go_on.wait(10)
        return real_clean(abspath, keep)

    monkeypatch.setattr(rewrite_mod.valuestore, "clean", paused_clean)
    run = (lambda: compact(path, log)) if rewrite == "compact" else (
        lambda: forget(path, ["gone"], log))
    rewriter = threading.Thread(target=run)
    rewriter.start()
    assert in_clean.wait(10)                # renamed in, clean not begun
    recorded: list[bool] = []
    recorder = threading.Thread(target=lambda: recorded.append(
        writer.record("c" * 64, "new", [], big + b"new")))
    recorder.start()
    recorder.join(0.5)                      # (on the old code it finished here, unwaited)
    go_on.set()
    rewriter.join(10)
    recorder.join(10)
    monkeypatch.undo()
    assert recorded == [True]
    writer.close()
    with Journal.open(path, log) as j:
        hit = j.get("c" * 64)
        assert hit is not None and hit.value == big + b"new"
        assert j.get("a" * 64).value == big
