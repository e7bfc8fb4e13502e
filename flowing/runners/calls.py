"""The flow's side of a body call shipped to another process: ``RemoteCall``
pickles it, submits it to the engine and turns what comes back into the
body's value or error; ``RemoteValue`` is a Dask value left on its worker.
What runs there is ``worker.run_shipped``; who drives the calls is
``remote.RemoteRunner``.

What ships, and the pickling rules. The flow pickles the body once per
function and run, and each call's arguments (dependency values, Flow inputs,
the ``current()`` facts) into bytes itself; the worker runs ``run_shipped``
(on Dask flowing sends itself to workers that lack it: see shipping.py) and
pickles the value back into bytes (a kept Dask value is only checked to
pickle; with a journal, its digest and pickle are made there by
``worker.store_form``, see ``RemoteCall.store``). The engine only ever carries bytes, and every (un)pickling
happens inside flowing's own ``try``: a failure is the task's error
(``CannotShip``, never retried) saying what could not be pickled — the body,
which argument, the return value — and how to fix it; it never breaks the
pool, and nothing hangs.

* ``ProcessPoolExecutor`` (and any other process executor): standard
  ``pickle``. A module-level ``@task`` ships by reference (``worker.TaskRef``:
  the worker imports the module and takes the task's function), ``__main__``
  included: under fork the worker has the script already; under spawn and
  forkserver it imports the script again, so the flow must run under
  ``if __name__ == "__main__":``. Lambdas, nested functions and closures
  cannot ship: ``CannotShip`` says to define the body at module level.
* loky and Dask: ``cloudpickle``. Functions of ``__main__`` (and lambdas,
  closures) ship by value; ``@task`` functions of importable modules ship by
  reference, as plain functions do with cloudpickle, so the workers need
  those modules installed.
* Values come back pickled the same way; an exception raised by the body
  comes back as itself (its class, so ``retry_on`` and ``retry_after`` work),
  with the worker's traceback as its ``__cause__`` (``RemoteTraceback``). An
  exception that pickles but cannot be rebuilt with its ``args`` (an
  ``__init__`` with other parameters) is rebuilt from its state; one that
  cannot travel at all becomes a ``RuntimeError`` carrying its type and
  message.

A Dask error saying the cluster could not deserialize the call (its
scheduler or workers lack flowing or the body's module) is ``CannotShip``,
never ``WorkerLost``; a value whose unpickling raises anything (even
``SystemExit``) is ``CannotShip`` too, never the body's own error.

A lost worker. ``run_shipped`` returns everything the body and the data can
do as a value, so an exception from the engine's future is the engine's
own. ``BrokenProcessPool`` (a worker killed, out of memory, ``os._exit``, or
a spawn worker that could not import the script) fails the task with
``PoolBroken``, never retried: the pool runs nothing more; create a new one.
A Dask worker that dies is first rescheduled by Dask itself (the
scheduler's ``allowed-failures``, 3 by default); then ``KilledWorker``
fails the attempt with ``WorkerLost``, retried like any error when
``retry_on`` allows. A refused submit (a shut-down executor, a closed
client) is ``CannotRun``, not retried.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import CannotRun, CannotShip, PoolBroken, WorkerLost
from ..interrupts import is_terminal
from ..results import Deferred
from ..text import safe_repr, safe_str
from .attempt import Job, timeout_error
from .worker import (
    CHANGED,
    KEPT_TAG,
    OK,
    RAISED,
    STORED,
    UNSHIPPABLE,
    Returned,
    TaskRef,
    describe,
    dumps_for,
    run_batch,
    type_name,
)

if TYPE_CHECKING:
    from ..journal.values import Pickled
    from ..tasks import TaskDef


class RemoteTraceback(Exception):
    """The traceback of a body that raised in another process (set as ``__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def shippable_body(td: TaskDef, by_value_main: bool = False) -> Any:
    """What to pickle for ``td``'s body: a ``TaskRef`` when the module attribute at the
    function's qualified name is a task made from this very function (``@task`` at
    module level), else the function itself, which must then pickle on its own.

    ``by_value_main``: for cloudpickle engines, whose workers are not forks of the
    flow's process, a function of ``__main__`` ships by value instead.
    """
    fn = td.fn
    try:
        module_name = getattr(fn, "__module__", None)
        qualname = getattr(fn, "__qualname__", None)
        if (type(module_name) is str and type(qualname) is str and "<" not in qualname
                and not (by_value_main and module_name == "__main__")):
            obj: Any = sys.modules.get(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part, None)
            if obj is not fn and getattr(obj, "fn", None) is fn:
                return TaskRef(module_name, qualname)
    except Exception:  # a hostile module attribute: ship the function as it is
        pass
    return fn


def engine_kind(executor: Any) -> str:
    """``"dask"`` (a distributed Client or its executor), ``"cloudpickle"`` (loky) or
    ``"pickle"`` (any other process-based executor)."""
    module = type(executor).__module__
    root = module.partition(".")[0]
    if root in ("distributed", "dask"):
        return "dask"
    if root == "loky" or module.startswith("joblib.externals.loky"):
        return "cloudpickle"
    return "pickle"


class RemoteValue(Deferred):
    """A Dask step's value kept on the worker that made it (SPEC §7b).

    Its remote dependents receive it there (its future is an argument of their
    submit); ``load()`` fetches it into this process, once, the first time
    something here needs it: a ``local=True`` body, a gate, listing
    ``for_each`` items, ``StepResult.value``/``flow.value``. At the end of a
    run, the small ones are fetched in one ``gather`` (``RemoteRunner.close``)
    so that results stay readable after the client closes; a big one is
    fetched on first use, while the client is open.

    With a journal, what it needs is made on the worker (``worker.store_form``,
    see ``RemoteCall.store``): ``made``, the digest of the value where it was
    made, and ``mutable``; the pickled value to store (``journal_form``, taken
    once), or the value itself when it is small. A digest made on a worker is
    never compared with one made here: a mutable value fetched here is
    digested here too (``baseline``, by ``digester``), and ``content_digest``
    says ``made`` while the fetched copy still digests to that baseline.
    """

    __slots__ = ("future", "task", "_value", "_lock", "made", "mutable", "stored", "baseline",
                 "digester", "dirty")
    passed_as_is = True

    def __init__(self, future: Any, task: str) -> None:
        self.future = future
        self.task = task
        self._value: Any = _UNFETCHED
        self._lock = threading.Lock()
        self.made: str | None = None      # the digest taken on the worker (journal only)
        self.mutable = True               # whether the value can change in place
        # its pickle, until the journal takes it (and, when small, to the end of the run:
        # ``remote._fetch_small``)
        self.stored: Pickled | None = None
        self.baseline: str | None = None  # the digest here of the fetched copy
        self.digester: Callable[[Any], str | None] | None = None  # the run's, with a journal
        # not (or no longer known to be) the value ``made`` describes: a body changed it
        # in place on its worker, or Dask computed it again after its worker was lost
        self.dirty = False

    @property
    def fetched(self) -> bool:
        return self._value is not _UNFETCHED

    def load(self) -> Any:
        with self._lock:
            if self._value is _UNFETCHED:
                try:
                    value = self.future.result()
                except Exception as exc:
                    if _cannot_serialize(exc):
                        raise CannotShip(
                            f"task '{self.task}': its value, kept on the Dask cluster, could "
                            f"not be pickled there to come to the flow's process "
                            f"({describe(exc)}); return plain data (or values that pickle "
                            f"every time), or read it only in steps on the cluster") from exc
                    raise WorkerLost(
                        f"task '{self.task}': its value, kept on the Dask cluster, could not "
                        f"be fetched ({describe(exc)}); read results before the client "
                        f"closes (small values are fetched at the end of the run)") from exc
                self._arrived(value)
            return self._value

    def set(self, value: Any) -> None:
        with self._lock:
            if self._value is _UNFETCHED:
                self._arrived(value)

    def _arrived(self, value: Any) -> None:
        """The value is here (under the lock). With a worker digest, it is digested
        here too: a copy that does not digest to ``made`` (a body on the worker
        changed it first, Dask computed it again) is ``dirty``; and a mutable one
        keeps that digest, to see a change made here later."""
        if self.made is not None and self.digester is not None:
            here = self.digester(value)
            if here != self.made:  # (or a digest that differs across machines: a re-run)
                self.dirty = True
            self.baseline = here
        self._value = value

    def content_digest(self, digest: Callable[[Any], str | None]) -> str | None:
        """The value's digest for the journal's checks: ``made`` while it is still
        that value (None once it is not: ``dirty``, or its copy here changed),
        else ``digest`` of it."""
        made = self.made
        if made is None:
            return digest(self.load())
        if self.dirty:
            return None
        if not self.mutable or not self.fetched:
            return made
        return made if (now := digest(self._value)) is not None and now == self.baseline else None

    def journal_form(self) -> Any:
        """What the journal writes: the pickle made on the worker (once), else the value."""
        stored, self.stored = self.stored, None
        return stored if stored is not None else self.load()

    def __repr__(self) -> str:
        return f"<value of task '{self.task}' on the Dask cluster>"


_UNFETCHED = object()


class RemoteCall:
    """Ships body calls to a process-based executor or a Dask client.

    ``start`` pickles the body (once per function and run) and the call and
    submits ``run_shipped``; ``result``, once the engine's future is done,
    unpickles what came back. No thread waits in between (see
    ``remote.RemoteRunner``). The engine only ever carries bytes. With a Dask
    ``Client`` the values that finish together are fetched in one ``gather``
    (``client.get_executor()`` fetches them one by one).
    """

    def __init__(self, executor: Any) -> None:
        self._executor = executor
        kind = engine_kind(executor)
        self.dask = kind == "dask"
        self.client = getattr(executor, "_client", executor) if self.dask else None
        self._cloud = kind != "pickle"
        self._dumps = dumps_for(self._cloud)
        self._bodies: dict[int, tuple[Any, bytes]] = {}  # id(fn) -> (fn, pickled body)
        self._futures: set[Any] = set()  # in flight, for close()
        self._lock = threading.Lock()      # guards _futures
        self._closed = False
        self._token = f"{id(self):x}"
        self._count = itertools.count()
        # Dask Client: values finished meanwhile are gathered in one call (see _gather)
        self._gathers = self.dask and callable(getattr(executor, "gather", None))
        self._to_gather: list[tuple[Any, list[Any]]] = []  # (future, box), under _lock
        self._gathering = threading.Lock()  # held by the one thread gathering a batch
        # Dask only: how to call a worker function there (see _dask_call); None: not asked yet
        self._shipped: tuple[Any, ...] | None = None

    def pack(self, job: Job, kwargs: dict[str, Any]) -> tuple[bytes, bytes]:
        """The pickled body and call of ``job`` (see ``start_batch``). Raises
        CannotShip, saying what could not be pickled."""
        return self._body_blob(job), self._call_blob(job, kwargs)

    def start_batch(self, packed: tuple[tuple[bytes, bytes], ...]) -> Any:
        """Process pools: submit packed calls as one engine task (``run_batch``);
        -> its future. Raises what the executor raised (see ``engine_error``)."""
        future = self._executor.submit(run_batch, packed, self._cloud)
        with self._lock:
            self._futures.add(future)
        return future

    def batch_outcomes(self, future: Any) -> tuple[list[tuple[int, Any]], list[float]]:
        """What a finished ``start_batch`` future holds: each call's ``(code, data)``
        (see ``unpack``) and the seconds each took on the worker. Raises the
        engine's own failure as it is (see ``engine_error``)."""
        with self._lock:
            self._futures.discard(future)
        done, seconds = future.result(timeout=0)
        return done, seconds

    def start(self, job: Job, kwargs: dict[str, Any], keep: int = 0) -> Any:
        """Dask: pickle and submit the body call; -> the engine's future. Raises
        CannotShip (what could not be pickled) or CannotRun (a refused submit).

        A dependency value kept on the cluster (``RemoteValue``) is passed as its
        future: Dask hands the value to the worker from where it was made.
        ``keep``: whether the value is to stay on the worker (``worker.KEEP``,
        ``KEEP_BIG``: see ``run_shipped``)."""
        body = self._body_blob(job)
        kept = {k: v for k, v in kwargs.items() if isinstance(v, RemoteValue)}
        for k, v in list(kept.items()):
            if v.digester is not None and v.made is None:
                # journaled, but its worker made no digest of it (store() failed): a body
                # there could change it unchecked, so it ships from here, as a copy
                kwargs = {**kwargs, k: v.load()}
                del kept[k]
        names = tuple(kept)
        futures = tuple(v.future for v in kept.values())
        # kept values whose digest was made on their worker: digested again there after
        # the body ran (a body on that worker receives the very object, and Dask
        # computes a lost one again)
        checks = tuple((k, v.made) for k, v in kept.items() if v.made is not None)
        if names:
            kwargs = {k: v for k, v in kwargs.items() if k not in kept}
        call = self._call_blob(job, kwargs, checks)
        try:
            key = f"{job.td.name}-{next(self._count)}-{self._token}"
            future = self._dask_call("run_shipped", body, call, self._cloud, keep, names,
                                     *futures, pure=False, key=key)
        except Exception as exc:
            raise self.engine_error(job, exc, "refused it") from exc
        with self._lock:
            self._futures.add(future)
        return future

    def _call_blob(self, job: Job, kwargs: dict[str, Any],
                   checks: tuple[tuple[str, str], ...] = ()) -> bytes:
        deadline = job.deadline
        left = None if deadline is None else max(0.0, deadline - time.time())
        try:
            return self._dumps((kwargs, job.context_fields()[:5], left, job.td.is_async, checks,
                                _main() if checks else None))
        except Exception as exc:
            raise CannotShip(self._which_argument(job, kwargs, exc)) from None

    def store(self, kept: RemoteValue, with_bytes: bool, closed: Callable[[], bool]) -> None:
        """Dask, with a journal: have the worker holding ``kept`` digest it and, when
        ``with_bytes``, pickle it for the store (``worker.store_form``), and keep
        that on ``kept``. Whatever fails here leaves ``kept`` as it was: the value
        is then fetched and digested here, as with a process pool. The wait is
        bounded: it ends once ``closed()`` (the run is over or interrupted)."""
        from ..keys.digest import DIGEST_VERSION  # lazy: Dask with a journal only
        from ..version import __version__  # lazy: Dask with a journal only

        try:
            future = self._dask_call("store_form", kept.future, (__version__, DIGEST_VERSION),
                                     _main(), with_bytes, pure=False, priority=_STORE_PRIORITY,
                                     key=f"store-{kept.task}-{next(self._count)}-{self._token}")
        except Exception:
            return
        done = threading.Event()
        try:
            future.add_done_callback(lambda _: done.set())
            while not done.wait(_WAIT_S):
                if closed():
                    return
            # (done: what is left is the transfer; a timeout here would start it over)
            answer = future.result()
        except Exception:  # the worker was lost: fetch it (and say why) if needed
            return
        finally:
            self._cancel(future)
        if answer[0] != STORED:
            return
        _, digest, immutable, small, frame, *buffers = answer
        if type(digest) is not str:
            return  # no stable content: digested here, which says why
        kept.made, kept.mutable = digest, not immutable
        if frame is not None:
            kept.stored = _pickled(frame, buffers)
        elif small is not None:
            import pickle  # lazy: keeps import flowing fast

            try:
                kept.set(pickle.loads(small))
            except BaseException as exc:  # not loadable here: fetched (and said) when needed
                if is_terminal(exc):
                    raise
                kept.made = None

    def _dask_call(self, name: str, *args: Any, **options: Any) -> Any:
        """Submit ``worker.<name>(*args)`` to Dask: as it is when the workers import
        flowing and the script's modules themselves, else through ``shipping.ENTRY``
        with the bundle that ``shipping.prepare`` sent them (once per run and
        client; see shipping.py)."""
        with self._lock:
            if self._shipped is None:
                from . import shipping  # lazy: Dask clients only

                try:
                    shipped = shipping.prepare(self.client)
                except Exception:  # a closed client: the submit itself will say so
                    shipped = None
                self._shipped = () if shipped is None else (shipping.ENTRY, *shipped)
            shipped_as = self._shipped
        if not shipped_as:
            from . import worker  # (imported already: the module attribute, by reference)

            return self._executor.submit(getattr(worker, name), *args, **options)
        return self._executor.submit(*shipped_as, name, *args, **options)

    def result(self, job: Job, future: Any, keep: int = 0) -> Any:
        """Dask: the body's value from its finished ``future`` (raises the body's
        exception, or the engine's failure as CannotShip/WorkerLost). ``keep``
        (``worker.KEEP``, ``KEEP_BIG``): a value that stayed on its worker is a
        ``RemoteValue``, nothing fetched; what came back instead
        (``worker.Returned``: a failure; with ``KEEP_BIG`` a small value) is
        fetched as without ``keep``."""
        with self._lock:
            self._futures.discard(future)
        returned = bool(keep) and may_be_returned(future)
        if keep and not returned:
            if future.status == "finished":
                return RemoteValue(future, job.td.name)
            try:
                error = future.exception()
            except BaseException as exc:
                if is_terminal(exc):
                    raise
                raise self.engine_error(job, exc, "lost it") from exc
            args: tuple[Any, ...] = getattr(error, "args", ())
            if type(error) is RuntimeError and len(args) == 3 and args[0] == KEPT_TAG:
                return self.unpack(job, args[1], args[2])
            raise self.engine_error(job, error or RuntimeError("no result"), "lost it")
        try:
            if self._gathers and future.status == "finished":
                outcome = self._gather(future)
            else:  # done: a Dask error is fetched from the cluster
                outcome = future.result()
        except Exception as exc:
            raise self.engine_error(job, exc, "lost it") from exc
        if returned and type(outcome) is not Returned:
            return outcome  # (Dask did not say its type) the value itself, fetched after all
        try:
            code, data = outcome
        except Exception as exc:  # not what run_shipped returns: the executor ran something else
            raise self.engine_error(job, exc, "lost it") from exc
        return self.unpack(job, code, data)

    def forget(self, future: Any) -> None:
        """The attempt is over without its value (timed out): cancel the call."""
        with self._lock:
            self._futures.discard(future)
        self._cancel(future)

    def _gather(self, future: Any) -> Any:
        """Fetch a finished Dask task's value, together with every other value that
        finished meanwhile: one round trip to the cluster for the whole batch
        instead of one per task (``Future.result()`` fetches its value alone).

        Whoever holds ``_gathering`` fetches the batch and hands each value to its
        waiting thread; a thread that finds its value there returns at once. If the
        batch cannot be fetched, each thread asks for its own value.
        """
        box: list[Any] = []
        with self._lock:
            self._to_gather.append((future, box))
        with self._gathering:
            if not box:
                with self._lock:
                    batch, self._to_gather = self._to_gather, []
                try:
                    values = self._executor.gather([f for f, _ in batch])
                except Exception:
                    values = [_UNGATHERED] * len(batch)
                for (_, waiting), value in zip(batch, values):
                    waiting.append(value)
        if box[0] is _UNGATHERED:
            return future.result()
        return box[0]

    def _body_blob(self, job: Job) -> bytes:
        td = job.td
        cached = self._bodies.get(id(td.fn))  # what ships depends on the function alone
        if cached is not None and cached[0] is td.fn:
            return cached[1]
        body = shippable_body(td, by_value_main=self._cloud)
        try:
            blob = self._dumps(body)
        except Exception as exc:
            if self._cloud:
                fix = ("something the function refers to (a global or a closure variable) "
                       "cannot be pickled: create such resources inside the body")
            else:
                fix = ("define the function at module level (not a lambda, a nested function "
                       "or a method of a local class) so that worker processes can import it; "
                       "loky and Dask ship lambdas and closures too (cloudpickle)")
            raise CannotShip(f"{job.label()}: its body {safe_repr(td.fn)} cannot be pickled to "
                             f"send it to a worker ({describe(exc)}); {fix}") from None
        self._bodies[id(td.fn)] = (td.fn, blob)
        return blob

    def _which_argument(self, job: Job, kwargs: dict[str, Any], exc: Exception) -> str:
        for name, value in kwargs.items():
            try:
                self._dumps(value)
            except Exception as e:
                return (f"{job.label()}: its argument '{name}' ({type_name(value)}) cannot "
                        f"be pickled to send it to a worker ({describe(e)}); pass plain data "
                        f"between tasks (open files, locks and connections inside the body), "
                        f"or run this flow on threads (no executor=)")
        return (f"{job.label()}: its arguments cannot be pickled to send them to a worker "
                f"({describe(exc)}); pass plain data between tasks")

    def unpack(self, job: Job, code: int, data: Any) -> Any:
        """The value of one call from its ``(code, data)``; raises the body's
        exception, or CannotShip, or the timeout."""
        import pickle  # lazy: keeps import flowing fast

        if code == CHANGED:
            kept = [(k, v) for k, v in job.kwargs.items()
                    if isinstance(v, RemoteValue) and v.made is not None]
            for _, value in kept:
                value.dirty = True  # (which one it was is not said: all it received)
            names = ", ".join(f"'{k}'" for k, _ in kept)
            its = (f"its dependency {names}, kept on the Dask cluster, is not the value"
                   if len(kept) == 1 else
                   f"one of its dependencies {names}, kept on the Dask cluster, is not the value")
            job.remote_change = (
                f"{job.label()}: not journaled: {its} journaled: changed in place by a body on "
                f"its worker (build new values instead), or computed again by Dask after a "
                f"worker was lost")
            code = OK
        if code == OK:
            try:
                return pickle.loads(data)
            except BaseException as exc:  # SystemExit too: the value's code, not the body
                if is_terminal(exc):
                    raise
                raise CannotShip(f"{job.label()}: its return value came back from the worker "
                                 f"but cannot be unpickled here ({describe(exc)}); return "
                                 f"plain data (dicts, lists, str, numbers)") from None
        if code == RAISED:
            try:
                error, tb = pickle.loads(data)
            except BaseException as exc:
                if is_terminal(exc):
                    raise
                error, tb = RuntimeError(f"the body raised, and its exception cannot be "
                                         f"unpickled here ({describe(exc)})"), None
            if tb and isinstance(error, BaseException):
                error.__cause__ = RemoteTraceback(tb)
            raise error
        if code == UNSHIPPABLE:
            raise CannotShip(f"{job.label()}: {data}")
        job.cancelled = True
        raise timeout_error(job)

    def engine_error(self, job: Job, exc: BaseException, what: str) -> BaseException:
        """The engine's own failure for ``job`` (never the body's: see ``run_shipped``);
        ``what``: "refused it" (at submit) or "lost it"."""
        import concurrent.futures  # lazy: keeps import flowing fast

        why = f"({describe(exc)})"
        if isinstance(exc, concurrent.futures.BrokenExecutor):
            return PoolBroken(
                f"{job.label()}: the process pool is broken {why}: one of its worker processes "
                f"died while it ran this or another body (killed, out of memory, os._exit()), "
                f"or could not start (a spawn or forkserver pool imports the main script "
                f"again: put the flow under `if __name__ == \"__main__\":`); nothing more can "
                f"run on that executor: create a new one")
        if what == "refused it":
            return CannotRun(f"{job.label()}: the executor refused it {why}; pass a running "
                             f"executor (or none: flowing then uses its own threads)")
        if self.dask and _cannot_load(exc):
            return CannotShip(
                f"{job.label()}: the Dask cluster could not load the call flowing shipped to "
                f"it {why}: its scheduler or workers cannot import something the call needs "
                f"(flowing itself, or the module of the task's body); install flowing and "
                f"your modules in the cluster's environment, at the client's versions")
        if self._closed:
            return WorkerLost(f"{job.label()}: the run was closed while it ran {why}")
        if _is_cancelled(exc):
            return WorkerLost(f"{job.label()}: the engine cancelled it {why}; it is retried "
                              f"if retry_on allows")
        return WorkerLost(f"{job.label()}: the worker running it was lost {why}; it is "
                          f"retried if retry_on allows (a killed worker is often out of "
                          f"memory)")

    def _cancel(self, future: Any) -> None:
        try:
            future.cancel()
        except Exception:  # a closed client: nothing left to cancel
            pass

    def close(self) -> None:
        """The run is over: cancel what was handed to the engine and is still pending."""
        self._closed = True
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            self._cancel(future)


_UNGATHERED = object()  # a value the batch could not fetch: its thread asks for it alone
_WAIT_S = 1.0  # a wait for the cluster checks this often whether the run is over
_STORE_PRIORITY = 100  # store_form goes before the bodies queued on the cluster
# how Dask may name the type of a worker.Returned (with its module, or without)
_RETURNED_NAMES = frozenset({f"{Returned.__module__}.{Returned.__qualname__}",
                             Returned.__qualname__})


def _main() -> str:
    """The name this process's script has in digests (``keys.usercode.module_name``)."""
    from ..keys.usercode import module_name  # lazy: Dask with a journal only

    return module_name("__main__")


def _pickled(frame: Any, buffers: list[Any]) -> Pickled:
    """The frame and buffers Dask brought (bytes, or views of its frames) as bytes views."""
    from ..journal.values import Pickled  # lazy: Dask with a journal only

    return Pickled(memoryview(frame).cast("B"), [memoryview(b).cast("B") for b in buffers])


def may_be_returned(future: Any) -> bool:
    """Whether a finished ``keep`` Dask task may hold a ``worker.Returned`` rather
    than a kept value: the type its worker reported (a name, or the class) says;
    when it says nothing, the result is fetched to see."""
    if future.status != "finished":
        return False  # a failure: raised, as with KEEP
    kind = getattr(future, "type", None)
    if isinstance(kind, type):
        return kind is Returned
    return not isinstance(kind, str) or kind in _RETURNED_NAMES


def _cannot_load(exc: BaseException) -> bool:
    """A Dask error saying the cluster could not unpickle what was sent (a module it
    lacks): the scheduler reports "Error during deserialization of the task graph",
    a worker an ImportError."""
    if isinstance(exc, ImportError):
        return True
    text = safe_str(exc).lower()
    return "deserializ" in text or "no module named" in text


def _cannot_serialize(exc: BaseException) -> bool:
    """A Dask error saying the worker could not pickle a value it was asked for."""
    return isinstance(exc, TypeError) and "could not serialize" in describe(exc).lower()


def _is_cancelled(exc: BaseException) -> bool:
    import asyncio  # lazy: keeps import flowing fast
    import concurrent.futures  # lazy: keeps import flowing fast

    return (isinstance(exc, (concurrent.futures.CancelledError, asyncio.CancelledError))
            or type(exc).__name__ in ("CancelledError", "FutureCancelledError"))
