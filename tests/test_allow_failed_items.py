"""allow_failed_items= and flowing.Failed (SPEC §5): a for_each task that tolerates a few
items failed for good, what its dependents see, what the journal keeps."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap

import pytest
from helpers import captured_log
from hostile import NoBoolNoEq, RaisingRepr, StrRaises

from flowing import Failed, Flow, ItemsFailed, StepState, task
from flowing.keys.digest import value_digest

S, F, K = StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED


# ----- argument checks -------------------------------------------------------------------

@task
def docs():
    return list(range(10))


@pytest.mark.parametrize("allow, error, words", [
    (-1, ValueError, "must be >= 0"),
    (0.0, ValueError, "in (0, 1)"),
    (1.0, ValueError, "in (0, 1)"),
    (1.5, ValueError, "in (0, 1)"),
    (float("nan"), ValueError, "in (0, 1)"),
    (True, TypeError, "int >= 0"),
    ("3", TypeError, "int >= 0"),
    ([1], TypeError, "int >= 0"),
])
def test_bad_allowances_raise_at_decoration_naming_the_task(allow, error, words):
    with pytest.raises(error) as exc:
        task(lambda docs: docs, name="fetch", depends_on=[docs], for_each="docs",
             allow_failed_items=allow)
    assert "task 'fetch'" in str(exc.value) and "allow_failed_items" in str(exc.value)
    assert words in str(exc.value)


def test_allowance_without_for_each_is_refused():
    with pytest.raises(ValueError, match="task 'whole'.*for_each"):
        task(lambda docs: docs, name="whole", depends_on=[docs], allow_failed_items=2)


@pytest.mark.parametrize("allow, n, expected", [(0, 10, 0), (3, 10, 3), (0.1, 40, 4),
                                                (0.1, 60, 6), (0.1, 45, 4), (0.5, 1, 0),
                                                (0.3, 10, 3)])
def test_a_share_is_rounded_down(allow, n, expected):
    td = task(lambda docs: docs, name="t", depends_on=[docs], for_each="docs",
              allow_failed_items=allow)
    assert td.allowed_failures(n) == expected


# ----- the run ---------------------------------------------------------------------------

def _flow(allow, gone=(7, 23), n=40, seen=None, **flow_kw):
    @task(name="docs")
    def listing():
        return [f"doc-{k}" for k in range(n)]

    @task(depends_on=[listing], for_each="docs", allow_failed_items=allow, retry=1,
          retry_backoff_base_ms=0)
    def fetch(docs):
        if int(docs.split("-")[1]) in gone:
            raise LookupError(f"{docs}: 404 gone")
        return docs.upper()

    @task(depends_on=[fetch])
    def summary(fetch):
        if seen is not None:
            seen.append(fetch)
        return {"ok": sum(1 for r in fetch if r), "missing": [r.item for r in fetch if not r]}

    return Flow(summary, **flow_kw)


def test_forty_items_two_gone_for_good_share_allowed():
    seen: list = []
    flow = _flow(0.1, seen=seen, log=False)
    res = flow.run()
    assert res["fetch"].state is S and res["summary"].state is S
    assert flow.ok
    value = seen[0]
    failed = [v for v in value if isinstance(v, Failed)]
    assert [f.index for f in failed] == [7, 23]
    assert [f.item for f in failed] == ["doc-7", "doc-23"]
    assert all(isinstance(f.error, LookupError) and not f for f in failed)
    assert value[0] == "DOC-0"
    assert res["summary"].value == {"ok": 38, "missing": ["doc-7", "doc-23"]}
    # items keep their per-item outcomes (the failed ones after their retry)
    bad = [it for it in res["fetch"].items if it.state is F]
    assert [(it.index, it.attempts) for it in bad] == [(7, 2), (23, 2)]


def test_more_failures_than_allowed_fails_naming_count_and_allowance():
    flow = _flow(1, log=False)
    res = flow.run()
    r = res["fetch"]
    assert r.state is F and isinstance(r.error, ItemsFailed)
    assert "2 of 40 items failed, more than allowed (1)" in str(r.error)
    assert res["summary"].state is K and not flow.ok
    assert "(allowed 1)" in flow.summary()


def test_zero_allowed_fails_on_one_and_succeeds_on_none():
    assert _flow(0, gone=(3,), log=False).run()["fetch"].state is F
    flow = _flow(0, gone=(), log=False)
    assert flow.run()["fetch"].state is S and flow.ok


def test_log_line_and_summary_say_failed_and_allowed(caplog):

    with captured_log() as (logger, handler):
        flow = _flow(6, gone=(4, 9, 30), n=60, log=logger)
        flow.run()
    ok = [m for m in handler.messages if m.startswith("ok      fetch")]
    assert ok and "60 items: 57 ok, 3 failed (allowed 6)" in ok[0]
    assert "item 4 ('doc-4'): LookupError: doc-4: 404 gone" in ok[0]
    assert "60 items: 57 ok, 3 failed (allowed 6)" in flow.summary()
    assert [m for m in handler.messages if m.startswith("flow ok")]


def test_report_and_mermaid_stay_sane():
    flow = _flow(0.1, log=False)
    flow.run()
    report = flow.report()
    json.dumps(report)
    fetch = report["tasks"]["fetch"]
    assert fetch["state"] == "succeeded" and report["ok"] is True
    assert fetch["items"]["failed"] == 2 and fetch["items"]["allowed_failures"] == 4
    assert "(allowed 4)" in fetch["items"]["line"]
    mermaid = flow.to_mermaid()
    assert "40 items, 2 failed" in mermaid
    assert "class " in mermaid and "succeeded" in mermaid


# ----- Failed: falsy, readable, picklable, stable content ------------------------------

def test_failed_is_falsy_readable_and_pickles_with_its_error():
    f = Failed(3, {"url": "u"}, LookupError("404 gone"))
    assert not f and bool(f) is False
    assert repr(f) == "Failed(3, {'url': 'u'}, LookupError: 404 gone)"
    back = pickle.loads(pickle.dumps(f))
    assert back == f and isinstance(back.error, LookupError) and back.item == {"url": "u"}


def test_failed_with_hostile_parts_never_raises():
    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("no")

    for error in (StrRaises("x"), Unpicklable("boom")):
        f = Failed(1, RaisingRepr(), error)
        assert "Failed(1, " in repr(f)
        back = pickle.loads(pickle.dumps(Failed(1, "item", error)))
        assert back.error_type == type(error).__name__
    g = Failed(2, NoBoolNoEq(), ValueError("v"))
    assert g != Failed(2, "other", ValueError("v"))  # an item whose __eq__ raises: unequal


def test_failed_digests_by_index_item_type_and_message():
    a = [1, Failed(1, "doc", LookupError("404"))]
    b = [1, Failed(1, "doc", LookupError("404"))]
    assert value_digest(a) is not None and value_digest(a) == value_digest(b)
    assert value_digest(a) != value_digest([1, Failed(1, "doc", LookupError("410"))])
    assert value_digest(a) != value_digest([1, Failed(1, "doc", KeyError("404"))])
    assert value_digest(a) != value_digest([1, Failed(2, "doc", LookupError("404"))])

    class Holder(Exception):  # an error whose state holds something with no content
        pass

    e = Holder("x")
    e.lock = __import__("threading").Lock()
    assert value_digest([Failed(0, "i", e)]) is not None


SCRIPT = textwrap.dedent('''
    import json, os, sys
    from flowing import Failed, Flow, task

    journal, calls, allow = sys.argv[1], sys.argv[2], float(sys.argv[3])
    allow = int(allow) if allow >= 1 else allow

    @task
    def docs():
        return [f"doc-{k}" for k in range(40)]

    @task(depends_on=[docs], for_each="docs", allow_failed_items=allow)
    def fetch(docs):
        with open(calls, "a") as f:
            f.write(docs + "\\n")
        if docs in ("doc-7", "doc-23"):
            raise LookupError(docs + " is gone")
        return docs.upper()

    @task(depends_on=[fetch])
    def summary(fetch):  # returns the Failed objects themselves: journaled, replayed
        return [r for r in fetch if isinstance(r, Failed)]

    flow = Flow(summary, journal_path=journal, log=False)
    res = flow.run()
    failed = res["summary"].value if res["summary"].ok else None
    print(json.dumps({"ok": flow.ok, "fetch": res["fetch"].state.value,
                      "summary": None if failed is None else [repr(f) for f in failed],
                      "errors": None if failed is None else [type(f.error).__name__
                                                             for f in failed],
                      "summary_cached": res["summary"].cached,
                      "digest": __import__("flowing.keys.digest").keys.digest.value_digest(
                          res["fetch"].value)}))
''')


def _run(tmp_path, journal, calls, allow, repo_env):
    script = tmp_path / "failing_docs.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), journal, str(calls), str(allow)],
                         env=repo_env, text=True, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    called = calls.read_text().split() if calls.exists() else []
    calls.write_text("")
    return json.loads(out.stdout), called


def test_a_rerun_in_a_fresh_process_asks_only_for_the_failed_items(tmp_path, repo_env):
    journal, calls = str(tmp_path / "run.jsonl"), tmp_path / "calls.txt"
    first, called = _run(tmp_path, journal, calls, 0.1, repo_env)
    assert first["ok"] is True and first["fetch"] == "succeeded"
    assert first["summary"] == ["Failed(7, 'doc-7', LookupError: doc-7 is gone)",
                                "Failed(23, 'doc-23', LookupError: doc-23 is gone)"]
    assert len(called) == 40
    assert first["summary_cached"] is False
    second, called = _run(tmp_path, journal, calls, 0.1, repo_env)
    assert sorted(called) == ["doc-23", "doc-7"]  # the 38 good items replay
    # the two failed the same way again: the same value, so the dependent replays
    # (its journaled Failed objects come back with their errors)
    assert second["summary_cached"] is True
    assert second["summary"] == first["summary"]
    assert second["errors"] == ["LookupError", "LookupError"]
    # the same content in another process: the same digest (no address in it)
    assert second["digest"] is not None and second["digest"] == first["digest"]


def test_with_an_allowance_of_one_the_fresh_run_fails_and_retries_only_the_two(tmp_path,
                                                                              repo_env):
    journal, calls = str(tmp_path / "run.jsonl"), tmp_path / "calls.txt"
    first, called = _run(tmp_path, journal, calls, 1, repo_env)
    assert first["ok"] is False and first["fetch"] == "failed" and first["summary"] is None
    second, called = _run(tmp_path, journal, calls, 1, repo_env)
    assert sorted(called) == ["doc-23", "doc-7"]


def test_an_address_in_the_message_does_not_change_the_digest():
    class Session:
        pass

    first, second = Session(), Session()  # both alive: two addresses
    one = Failed(0, "i", RuntimeError(f"lost {first!r}"))
    two = Failed(0, "i", RuntimeError(f"lost {second!r}"))
    assert one.message != two.message  # two objects, two addresses
    assert value_digest([one]) == value_digest([two])


def test_numpy_like_numbers_are_accepted():
    import fractions

    td = task(lambda docs: docs, name="t", depends_on=[docs], for_each="docs",
              allow_failed_items=fractions.Fraction(1, 4))
    assert td.allowed_failures(8) == 2
