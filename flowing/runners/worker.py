"""What runs in the worker process: ``run_shipped``, the one entry point of a
shipped body call, and what it needs there.

Process pools run ``flowing.runners.worker.run_shipped`` by reference; Dask
runs it too, or ``shipping.ENTRY``, which imports it on the worker once the
bundle of flowing and the script's modules is on ``sys.path`` (and clears
this module's ``_bodies``). So this module imports as little as it can: the
standard library, ``context`` (``current()`` in the worker), ``text`` and the
attempt's fork guard and traceback format; pickle and cloudpickle only when
a call comes.

The call (made by ``calls.RemoteCall``, the flow's side): the pickled body (a
``TaskRef`` or the function itself), and the pickled ``(kwargs, the current()
facts, seconds left before the deadline or None, is_async, checks)``. Bodies already
unpickled are kept by their bytes (at most ``_BODY_CACHE_SIZE``), so a body
is unpickled once per worker, not once per call.

Process pools run ``run_batch``: one or more such calls in one engine task,
and the seconds they took (so the flow learns which bodies are quick).

What comes back: ``(code, data)``, every (un)pickling inside flowing's own
``try``, so that anything the body or the data can do is a value and an
exception from the engine's future is by construction the engine's own (a
dead worker, a shutdown):

``OK``          data: the pickled value
``RAISED``      data: the pickled ``(exception, formatted traceback)``. An
                exception that pickles but cannot be rebuilt with its ``args``
                (an ``__init__`` with other parameters) is sent by its state
                (``_ByState``); one that cannot travel at all becomes a
                ``RuntimeError`` carrying its type and message.
``UNSHIPPABLE`` data: str, what could not be (un)pickled or imported here, and
                the fix (a missing module is named, with how to install it)
``TIMED_OUT``   data: None; the worker gave up on the body at its deadline
``KEPT``        (Dask, ``keep``) the value itself stays on the worker, only
                checked to pickle; anything else comes back as
                ``Returned((code, data))`` (see ``run_shipped``).
``CHANGED``     data: the pickled value, as ``OK``; but an argument kept on
                the cluster no longer has the digest the call gave for it
                (``checks``): a body on this worker changed it in place, or
                Dask computed it again after its worker was lost (a body
                that gives another value each time). The flow does not
                journal that result (``inplace``).
``STORED``      (``store_form``) what the journal stores of a value kept on
                the worker, flat: ``(STORED, digest, immutable, small, frame,
                *buffers)`` (Dask carries a tuple's top-level pieces as
                frames of their own; nested, 200 MB takes several times longer).

With a journal, the big values of Dask steps (``KEEP_BIG``: a pickle too big
for a journal line; a small one comes back as without ``keep``) stay on the
workers, and what the journal needs of each is made where it is
(``store_form``, a Dask task of its own run on the value right after its
step): its content digest, taken with
the same code as in the flow (the same flowing version, checked; else
``UNSHIPPABLE`` and the flow fetches the value and digests it itself), and
its pickle, as protocol-5 frame and out-of-band buffers (memoryviews), which
Dask carries without copies and the flow writes to the value store as they
come, never unpickling them (a value asked for without ``KEEP_BIG`` may be
small: its pickle then comes as bytes, unpickled for a readable line). A
dependent's call
names the digests of its kept arguments (``checks``): a body on the same
worker receives those very objects, and Dask computes a lost one again, so
they are digested again after the body ran, and a change is ``CHANGED``.

``flowing.current()`` answers in the worker from a snapshot: task, attempt,
max_attempts, item_index, item, deadline (in the worker's clock);
``cancelled()`` turns True at the deadline (the flow's fail_fast and Ctrl-C
cannot be seen here). Coroutine bodies run with ``asyncio.run``.

The deadline, in the worker. A body already running cannot be killed, so the
worker gives up on it at the flow's deadline, measured from its own start:
with ``timeout_s`` the body runs on a daemon thread of the worker and
``run_shipped`` returns ``TIMED_OUT`` at the deadline. The worker is free for
the next call at once; the abandoned body keeps running in the background
(sharing that worker's CPU) until it ends or its process exits, and a body
that polls ``current().cancelled()`` can stop itself. A coroutine is
cancelled for real. Bodies without ``timeout_s`` run on the worker's own
thread, as with the plain engine.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import context
from ..text import safe_str
from .attempt import exit_if_forked, format_traceback


class TaskRef:
    """A module-level ``@task`` function, pickled by reference to its TaskDef.

    ``@task def f`` makes the module attribute ``f`` the TaskDef, so ``pickle``
    cannot find the plain function under its own name; this finds the TaskDef
    in the worker and takes its function.
    """

    __slots__ = ("module", "qualname")

    def __init__(self, module: str, qualname: str) -> None:
        self.module = module
        self.qualname = qualname

    def resolve(self) -> Callable[..., Any]:
        import importlib  # lazy: loaded when a call comes in

        obj: Any = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            obj = getattr(obj, part)
        fn: Callable[..., Any] = getattr(obj, "fn", obj)
        if not callable(fn):
            raise TypeError(f"{self.module}.{self.qualname} is not callable in the worker")
        return fn

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskRef, (self.module, self.qualname))


# What the worker sends back: (code, data); see the module docstring.
OK = 0          # data: the pickled value
RAISED = 1      # data: the pickled (exception, formatted traceback)
UNSHIPPABLE = 2  # data: str, what could not be (un)pickled in the worker
TIMED_OUT = 3   # data: None; the worker gave up on the body at its deadline
KEPT = 4        # data: the value itself, kept on the worker (run_shipped's keep)
STORED = 5      # (store_form) then: digest, immutable, small pickle or None, frame, *buffers
CHANGED = 6     # data: the pickled value; a kept argument changed in place while the body ran
KEPT_TAG = "flowing: not kept"  # args[0] of what shipping.ENTRY raises for a keep call
# run_shipped's keep: the value stays on the worker; or only when too big for a journal line
KEEP = 1
KEEP_BIG = 2

# Bodies already unpickled, by their pickled bytes (bounded; shipping.ENTRY clears it).
_bodies: dict[bytes, Callable[..., Any]] = {}
_BODY_CACHE_SIZE = 256


class _WorkerTimeout(Exception):
    """A coroutine body overran its deadline in the worker."""


def _load_body(blob: bytes) -> Callable[..., Any]:
    fn = _bodies.get(blob)
    if fn is None:
        import pickle  # lazy: loaded when a call comes in

        body = pickle.loads(blob)
        fn = body.resolve() if isinstance(body, TaskRef) else body
        if len(_bodies) >= _BODY_CACHE_SIZE:
            _bodies.clear()
        _bodies[blob] = fn
    return fn


def _missing_module(exc: BaseException, what: str) -> str | None:
    """The message for a module the worker cannot import, or None for other errors."""
    name = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if not isinstance(name, str) or not name:
        return None
    return (f"{what} needs the module '{name}', which the worker cannot import "
            f"({describe(exc)}); install '{name.partition('.')[0]}' on the workers (the "
            f"version the script uses), or mark the task @task(local=True) to run it in "
            f"the flow's process (flowing ships itself and the modules of the script's "
            f"folder, not packages found elsewhere)")


def _unloadable(exc: BaseException, what: str, verb: str, fix: str) -> str:
    """Why ``what`` (the body, its arguments) could not be ``verb`` in the worker."""
    return (_missing_module(exc, what)
            or f"{what} could not be {verb} in the worker ({describe(exc)}); {fix}")


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {safe_str(exc)}"


def type_name(value: object) -> str:
    t = type(value)
    module = getattr(t, "__module__", "builtins")
    return t.__qualname__ if module == "builtins" else f"{module}.{t.__qualname__}"


def dumps_for(cloud: bool) -> Callable[[Any], bytes]:
    if cloud:
        import importlib  # lazy: loaded when a call comes in

        cloudpickle: Any = importlib.import_module("cloudpickle")  # untyped; engines bring it
        dumps: Callable[[Any], bytes] = cloudpickle.dumps
        return dumps
    import pickle  # lazy: loaded when a call comes in

    return lambda obj: pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)


def _invoke(fn: Callable[..., Any], kwargs: dict[str, Any], snapshot: context.Snapshot,
            deadline: float | None, is_async: bool) -> tuple[bool, Any]:
    """Call the body (a coroutine body's awaitable with ``asyncio.run``): (True, value)
    or (False, (exception, traceback text)). Never raises."""
    token = context.enter(snapshot)
    pid = os.getpid()
    try:
        value = fn(**kwargs)
        if is_async:
            import asyncio  # lazy: loaded when a call comes in

            value = asyncio.run(_await_body(value, deadline))
        exit_if_forked(pid, 0)
        return True, value
    except BaseException as exc:
        exit_if_forked(pid, 1)
        return False, (exc, format_traceback(exc))
    finally:
        context.leave(token)


async def _await_body(awaitable: Any, deadline: float | None) -> Any:
    if deadline is None:
        return await awaitable
    import asyncio  # lazy: loaded when a call comes in

    body = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({body}, timeout=max(0.0, deadline - time.time()))
    if not done:
        body.cancel()  # cancelled for real; asyncio.run waits for its finally blocks
        raise _WorkerTimeout
    return body.result()


def run_shipped(body_blob: bytes, call_blob: bytes, cloud: bool, keep: int = 0,
                names: tuple[str, ...] = (), *values: Any) -> Any:
    """Runs in the worker: unpickle the body and its call, run it, pickle what it gives.

    ``names``/``values``: arguments that were kept on the cluster (Dask hands the
    values of the futures passed for them). ``keep`` (Dask, a whole task's
    attempt): ``KEEP``: the value is returned as it is, to stay on the worker
    until a dependent or the flow asks for it; anything else (an error, a
    timeout) comes back as ``Returned((code, data))``, whose type the flow
    reads in the Dask future's ``type`` without fetching anything. (Never an
    exception: Dask would log it as a failed task and cut a long one short.)
    ``KEEP_BIG`` (with a journal): the same, but only a value whose pickle
    passes the journal's threshold stays; a small one comes back as
    ``Returned((OK, data))``. ``shipping.ENTRY``, which cannot import flowing
    when it fails, raises ``RuntimeError(KEPT_TAG, code, data)`` instead.
    """
    code, data = _run_shipped(body_blob, call_blob, cloud, keep, names, values)
    if not keep:
        return code, data
    if code == KEPT:
        return data
    return Returned((code, data))


class Returned(tuple):  # type: ignore[type-arg]
    """``(code, data)`` of a ``keep`` call whose value does not stay on the worker."""

    __slots__ = ()


def run_batch(calls: tuple[tuple[bytes, bytes], ...],
              cloud: bool) -> tuple[list[tuple[int, Any]], list[float]]:
    """Runs in a process pool's worker: several calls (body, call) in turn, each as
    ``run_shipped`` runs it; -> (each call's ``(code, data)``, the seconds each
    took here). A single call comes this way too, so every call tells the flow
    how long its body took (``remote`` batches the quick ones)."""
    done: list[tuple[int, Any]] = []
    seconds: list[float] = []
    clock = time.perf_counter
    for body, call in calls:
        began = clock()
        done.append(_run_shipped(body, call, cloud, 0, (), ()))
        seconds.append(clock() - began)
    return done, seconds


def _run_shipped(body_blob: bytes, call_blob: bytes, cloud: bool, keep: int,
                 names: tuple[str, ...], values: tuple[Any, ...]) -> tuple[int, Any]:
    """The body of ``run_shipped``: -> (code, data).

    Everything that can fail here comes back as a value: the body's own
    exception, and what could not be unpickled or pickled. So any exception
    the engine raises on the flow's side is, by construction, the engine's (a
    dead worker, a shutdown), never the body's or the data's.

    With a deadline the body runs on a daemon thread of the worker and this
    returns at the deadline whatever the body does: the worker is free for
    the next call, and a body that never ends cannot hold the worker (or the
    pool's shutdown, or the flow's exit) beyond it. A coroutine is cancelled
    for real at the deadline.
    """
    import pickle  # lazy: loaded when a call comes in

    try:
        fn = _load_body(body_blob)
    except BaseException as exc:
        return UNSHIPPABLE, _unloadable(
            exc, "its body", "loaded", "the worker must be able to import the body's module "
            "(install it there); a script run with a spawn or forkserver pool needs its flow "
            "under `if __name__ == \"__main__\":`, and tasks written in a notebook need fork, "
            "loky or Dask (or a module)")
    try:
        kwargs, fields, left, is_async, checks, main = pickle.loads(call_blob)
    except BaseException as exc:
        return UNSHIPPABLE, _unloadable(
            exc, "its arguments", "unpickled", "pass plain data, or values whose classes the "
            "worker can import")
    for name, value in zip(names, values):
        kwargs[name] = value
    deadline = None if left is None else time.time() + left
    snapshot = context.Snapshot((*fields, deadline))
    if deadline is None:
        ok, value = _invoke(fn, kwargs, snapshot, None, is_async)
    else:
        box: list[tuple[bool, Any]] = []
        finished = threading.Event()

        def body() -> None:
            try:
                box.append(_invoke(fn, kwargs, snapshot, deadline, is_async))
            finally:
                finished.set()

        threading.Thread(target=body, daemon=True, name=f"flowing-body-{fields[0]}").start()
        if not finished.wait(max(0.0, deadline - time.time())) or not box:
            return TIMED_OUT, None
        ok, value = box[0]
    dumps = dumps_for(cloud)
    if ok:
        try:
            if checks and _changed(kwargs, checks, main):
                return CHANGED, dumps(value)
            if keep:  # it must be able to travel later (to a dependent, or here)
                if keep == KEEP_BIG and not (type(value) in _SIZED
                                             and len(value) > _SMALL_PICKLE):
                    small = _pickled_if_small(value, _SMALL_PICKLE)  # (it pickles: checked)
                    if small is not None:
                        return OK, small
                elif type(value) not in _PLAIN:
                    _pickled_if_small(value, 0)
                return KEPT, value
            return OK, dumps(value)
        except BaseException as exc:
            return UNSHIPPABLE, (f"its return value ({type_name(value)}) cannot be pickled "
                                  f"to send it back from the worker ({describe(exc)}); return "
                                  f"plain data (dicts, lists, str, numbers), e.g. list(...) "
                                  f"of a generator")
    error, tb = value
    if isinstance(error, _WorkerTimeout):
        return TIMED_OUT, None
    # An exception that pickles but cannot be rebuilt (its __init__ wants other
    # arguments than its args, a classic) is sent by state instead; one that
    # cannot be sent at all becomes a RuntimeError carrying its text.
    problem: BaseException | None = None
    for shipped in (error, _ByState(error)):
        try:
            blob = dumps((shipped, tb))
            pickle.loads(blob)
            return RAISED, blob
        except BaseException as exc:
            problem = problem or exc
    assert problem is not None
    stand_in = RuntimeError(f"{type(error).__name__}: {safe_str(error)} (the exception itself "
                            f"could not be sent back from the worker: {describe(problem)})")
    return RAISED, dumps((stand_in, tb))


_PLAIN = frozenset({bytes, bytearray, str, int, float, bool, type(None)})


class _Sink:
    """A file that keeps what is written to it while that is at most ``keep`` bytes,
    and only counts the rest: pickling into it checks a value without a copy."""

    def __init__(self, keep: int) -> None:
        self.parts: list[bytes] | None = []
        self.left = keep

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes  # (protocol 5 writes big buffers as PickleBuffer)
        self.left -= n
        if self.parts is not None:
            if self.left < 0:
                self.parts = None
            else:
                self.parts.append(bytes(data))
        return n


_SMALL_PICKLE = 64 * 1024  # the journal's threshold (journal.values.THRESHOLD, tested equal)
_SIZED = frozenset({bytes, bytearray, str})  # their len() is at most their pickle's size


def _pickled_if_small(value: Any, up_to: int) -> bytes | None:
    """``value`` pickled by cloudpickle when that takes at most ``up_to`` bytes, else
    None (without keeping a copy of a big one). Raises what pickling it raises."""
    import importlib  # lazy: loaded when a call comes in
    import pickle  # lazy: loaded when a call comes in

    cloudpickle: Any = importlib.import_module("cloudpickle")
    out = _Sink(up_to)
    cloudpickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return None if out.parts is None else b"".join(out.parts)


def _changed(kwargs: dict[str, Any], checks: tuple[tuple[str, str], ...], main: str) -> bool:
    """Whether a kept argument no longer digests as the call said it did (``main``:
    the name of the flow's script, see ``store_form``)."""
    from ..keys.digest import value_digest  # lazy: only calls with a journal check
    from ..keys.usercode import main_name  # lazy: as above

    token = main_name.set(main)
    try:
        return any(value_digest(kwargs.get(name)) != digest for name, digest in checks)
    finally:
        main_name.reset(token)


def store_form(value: Any, versions: tuple[str, int], main: str,
               with_bytes: bool) -> tuple[Any, ...]:
    """Runs on a Dask worker, on a value kept there (see the module docstring):
    ``(STORED, digest, immutable, small, frame, *buffers)``, or ``UNSHIPPABLE``
    with why the flow must fetch the value and do it itself. ``versions``: the
    flow's flowing and digest versions; ``main``: the name the flow's script
    has in digests (what its ``__main__`` classes and functions, shipped here
    by value, are named by, as in the flow); ``with_bytes``: the journal
    stores the value (else only its digest is wanted)."""
    try:
        from ..keys.digest import DIGEST_VERSION, digest_info  # lazy: only when a journal asks
        from ..keys.usercode import main_name  # lazy: as above
        from ..version import __version__  # lazy: as above

        if (__version__, DIGEST_VERSION) != tuple(versions):
            return UNSHIPPABLE, (f"the worker's flowing is {__version__}, the flow's "
                                 f"{versions[0]}")
        token = main_name.set(main)
        try:
            digest, immutable = digest_info(value)
        finally:
            main_name.reset(token)
        if digest is None:  # no stable content: the flow digests it itself, and says why
            return STORED, None, False, None, None
        small: bytes | None = None
        frame: Any = None
        buffers: list[Any] = []
        if with_bytes:
            from ..journal.values import THRESHOLD, dumps, pickled_size  # lazy: as above

            try:  # (memoryviews: Dask carries them without copies)
                frame, buffers = dumps(value)
                big = pickled_size(frame, buffers) > THRESHOLD
            except Exception:  # (a class shipped by value): only cloudpickle can, if small
                frame, buffers, big = None, [], False
            if not big:
                small, frame, buffers = _pickled_if_small(value, THRESHOLD), None, []
                if small is None:
                    return UNSHIPPABLE, "its value cannot be pickled here for the journal"
        # flat: Dask carries the top-level pieces of a tuple as frames of their own
        return (STORED, digest, immutable, small, frame, *buffers)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # anything else: the flow then does it itself
        return UNSHIPPABLE, describe(exc)


def _rebuild_exception(cls: type[BaseException], args: tuple[Any, ...],
                       state: dict[str, Any] | None) -> BaseException:
    exc = cls.__new__(cls, *args)
    exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc


class _ByState:
    """Pickles an exception as its class, args and attributes, without calling
    its ``__init__`` on the way back."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        e = self.exc
        return (_rebuild_exception, (type(e), e.args, getattr(e, "__dict__", None)))
