"""Random DAGs checked against a reference model of the scheduling contract."""

import concurrent.futures
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowing import Flow, StepState, task
from flowing.tasks import clear_registry

S, F, K = StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED


@st.composite
def dags(draw):
    n = draw(st.integers(1, 12))
    specs = []
    for i in range(n):
        detached = draw(st.booleans()) if i > 0 and draw(st.integers(0, 3)) == 0 else False
        # main tasks may only depend on main tasks
        allowed = [j for j in range(i) if detached or not specs[j]["detached"]]
        deps = draw(st.lists(st.sampled_from(allowed), unique=True, max_size=3)) if allowed else []
        if detached and not deps:
            detached = False  # a detached task needs a dependency to join the flow
        specs.append(dict(
            deps=sorted(deps),
            detached=detached,
            fails=draw(st.integers(0, 5)) == 0,
            flaky=draw(st.integers(0, 4)) == 0,
            when_false=draw(st.integers(0, 7)) == 0,
        ))
    return specs


def _build(specs, log, lock):
    tds = []
    for i, spec in enumerate(specs):
        attempts = [0]

        def body(__i=i, __spec=spec, __attempts=attempts, **deps):
            with lock:
                log.append(("start", __i))
            try:
                __attempts[0] += 1
                if __spec["fails"]:
                    raise ValueError(f"t{__i} fails")
                if __spec["flaky"] and __attempts[0] == 1:
                    raise ConnectionError(f"t{__i} blips")
                return __i + sum(deps.values())
            finally:
                with lock:
                    log.append(("end", __i))

        when = (lambda **kw: False) if spec["when_false"] else None
        tds.append(task(body, name=f"t{i}", depends_on=[tds[d] for d in spec["deps"]],
                        retry=1 if spec["flaky"] else 0, retry_backoff_base_ms=0,
                        detached=spec["detached"], when=when))
    return tds


def _model(specs):
    """Expected (state, value, attempts) per task when fail_fast is off."""
    out = []
    for i, spec in enumerate(specs):
        dep_states = [out[d][0] for d in spec["deps"]]
        if any(s is not S for s in dep_states):
            out.append((K, None, 0))
        elif spec["when_false"]:
            out.append((K, None, 0))
        elif spec["fails"]:
            out.append((F, None, 2 if spec["flaky"] else 1))
        else:
            value = i + sum(out[d][1] for d in spec["deps"])
            out.append((S, value, 2 if spec["flaky"] else 1))
    return out


def _model_ok(specs, expected):
    """Flow.ok per SPEC §3: no main failure; skips only by a gate (own ``when``, or only
    downstream of such skips)."""
    gated = {}
    for i, spec in enumerate(specs):
        if spec["detached"]:
            continue
        state = expected[i][0]
        if state is F:
            return False
        if state is S:
            continue
        deps = spec["deps"]
        if all(expected[d][0] is S for d in deps) and spec["when_false"]:
            gated[i] = True
        elif any(gated.get(d) for d in deps) and all(
                expected[d][0] is S or gated.get(d) for d in deps):
            gated[i] = True
        else:
            return False
    return True


def _check_ordering(specs, log):
    pos = {entry: k for k, entry in enumerate(log)}
    for i, spec in enumerate(specs):
        if ("start", i) not in pos:
            continue
        for d in spec["deps"]:
            assert pos[("end", d)] < pos[("start", i)], (i, d, log)
    main_ends = [k for k, (what, i) in enumerate(log)
                 if what == "end" and not specs[i]["detached"]]
    detached_starts = [k for k, (what, i) in enumerate(log)
                       if what == "start" and specs[i]["detached"]]
    if main_ends and detached_starts:
        assert max(main_ends) < min(detached_starts), log


def _reason_ok(specs, res, i, r):
    names = {f"t{d}": res[f"t{d}"] for d in specs[i]["deps"]}
    reason = r.reason or ""
    if reason == "when() returned False":
        return specs[i]["when_false"] and all(x.state is S for x in names.values())
    for name, dep in names.items():
        if reason == f"dependency '{name}' failed":
            return dep.state is F
        if reason == f"dependency '{name}' was skipped":
            return dep.state is K
    return False


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(specs=dags(), schedule=st.sampled_from(["eager", "layers"]),
       max_workers=st.integers(1, 4), use_executor=st.booleans())
def test_random_dags_match_the_model_without_fail_fast(specs, schedule, max_workers,
                                                       use_executor):
    clear_registry()
    log, lock = [], threading.Lock()
    tds = _build(specs, log, lock)
    terminals = [td for td in tds if not td.detached]
    executor = concurrent.futures.ThreadPoolExecutor(3) if use_executor else None
    try:
        flow = Flow(*terminals, fail_fast=False, schedule=schedule, max_workers=max_workers,
                    executor=executor, log=False)
        res = flow.run()
    finally:
        if executor is not None:
            executor.shutdown()
    expected = _model(specs)
    assert set(res) == {f"t{i}" for i in range(len(specs))}
    for i, (state, value, attempts) in enumerate(expected):
        r = res[f"t{i}"]
        assert r.state is state, (i, r, specs)
        if state is S:
            assert r.value == value
            assert r.attempts == attempts
        elif state is F:
            assert r.attempts == attempts
            assert isinstance(r.error, ValueError)
        else:
            assert r.attempts == 0
            assert _reason_ok(specs, res, i, r), (i, r.reason, specs)
    # plan order, and every task that has a result ran at most its attempts
    assert list(res) == [n for layer in flow.plan() for n in layer]
    _check_ordering(specs, log)
    assert flow.ok == _model_ok(specs, expected)
    assert {r.name for r in flow.failures} == {
        f"t{i}" for i, s in enumerate(specs) if not s["detached"] and expected[i][0] is F}
    assert {r.name for r in flow.detached_failures} == {
        f"t{i}" for i, s in enumerate(specs) if s["detached"] and expected[i][0] is F}


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(specs=dags(), schedule=st.sampled_from(["eager", "layers"]),
       max_workers=st.integers(1, 4))
def test_random_dags_with_fail_fast_invariants(specs, schedule, max_workers):
    clear_registry()
    log, lock = [], threading.Lock()
    tds = _build(specs, log, lock)
    terminals = [td for td in tds if not td.detached]
    flow = Flow(*terminals, fail_fast=True, schedule=schedule, max_workers=max_workers,
                log=False)
    res = flow.run()
    assert set(res) == {f"t{i}" for i in range(len(specs))}
    failed_main = {f"t{i}" for i, s in enumerate(specs)
                   if not s["detached"] and res[f"t{i}"].state is F}
    started = {i for what, i in log if what == "start"}
    for i, spec in enumerate(specs):
        r = res[f"t{i}"]
        deps_ok = all(res[f"t{d}"].state is S for d in spec["deps"])
        if r.state is S:
            assert deps_ok and not spec["fails"] and not spec["when_false"]
            assert r.value == i + sum(res[f"t{d}"].value for d in spec["deps"])
        elif r.state is F:
            assert spec["fails"] and deps_ok
        else:
            assert r.attempts == 0
            if r.reason.startswith("not started: "):
                assert not spec["detached"]
                assert r.reason[len("not started: "):] in {
                    f"fail_fast: '{n}' failed" for n in failed_main}, r.reason
                assert i not in started  # "not started" means the body never ran
            else:
                assert _reason_ok(specs, res, i, r), (i, r.reason, specs)
        if spec["detached"]:
            # fail_fast never stops a detached task: it follows its dependencies only
            if deps_ok and not spec["when_false"]:
                assert r.state is (F if spec["fails"] else S), (i, r)
    # a started task (retries included) ran to the end
    for i in started:
        assert res[f"t{i}"].state is not K or res[f"t{i}"].reason == "when() returned False"
    _check_ordering(specs, log)
