"""Where independent pieces of work run: in this process (the default) or as tasks on a Ray cluster.

Every parallel job in onnxprune is a map: `executor.map(work, shared, items)` calls `work(context, item)`
for every item and returns the results IN ITEM ORDER, whatever order they finished in; `context` is
`setup(shared)` (or `shared` itself), built once per process. Callers add the partial results in that
fixed order, so the answer does not depend on the executor or on the number of workers.

    executor=None / "in-process"   this process, one item after another (no Ray needed)
    executor="ray"                 Ray: the connected cluster when `ray.is_initialized()`, else
                                   `ray.init()` (RAY_ADDRESS, a cluster started by `ray start` on this
                                   machine, or a new local one with the machine's cores)
    executor=RayExecutor(address)  Ray at that address ("auto", "ray://host:10001", "host:6379")

On Ray, `shared` (the model, the data of a sensitivity sweep) goes to the object store once and each worker
process builds its context from it once; items (data shards, candidates) travel with their tasks. A task
that fails raises, on the caller's side, its own OnnxPruneError type with the task's name in the message,
or TaskError (naming the task) for any other exception.

Public entry points that collect calibration statistics take `executor=` through `@uses_executor`: inside
them `current()` is that executor, so `calibration.collect` and reconstruction run on it without every
stage in between passing it along.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from onnxprune.errors import ExecutorError, InvalidRequestError, MissingExtraError, OnnxPruneError, TaskError

T = TypeVar("T")
R = TypeVar("R")
Work = Callable[[Any, Any], Any]
OnDone = Callable[[int, Any], None]  # (item index, its result), called as each item finishes


class Executor(Protocol):
    name: str

    def map(self, work: Work, shared: Any, items: Iterable[Any], *, setup: Callable[[Any], Any] | None = None,
            names: Callable[[int, Any], str] | None = None, on_done: OnDone | None = None,
            keep: bool = True) -> list[Any]: ...


class InProcess:
    """One item after another in this process; errors propagate unchanged."""

    name = "in-process"

    def map(self, work: Work, shared: Any, items: Iterable[Any], *, setup: Callable[[Any], Any] | None = None,
            names: Callable[[int, Any], str] | None = None, on_done: OnDone | None = None,
            keep: bool = True) -> list[Any]:
        context = shared if setup is None else setup(shared)
        results = []
        for k, item in enumerate(items):
            result = work(context, item)
            if keep:
                results.append(result)
            if on_done is not None:
                on_done(k, result)
        return results


class RayExecutor:
    """Tasks on a Ray cluster (see the module docstring). `address`: None (the connected cluster, else
    ray.init()'s own discovery) or a cluster address; `pending`: tasks in flight at most (default: twice
    the cluster's CPUs), so a large data set is not all in the object store at once."""

    name = "ray"

    def __init__(self, address: str | None = None, *, pending: int | None = None) -> None:
        self.address = address
        self.pending = pending

    def connect(self):
        """The ray module, connected (started when needed)."""
        ray = import_ray()
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
            except Exception as exc:  # noqa: BLE001 - Ray raises plain Exception when a local start times out
                where = f"the Ray cluster at {self.address!r}" if self.address else "Ray (a local cluster)"
                raise ExecutorError(f"cannot start or connect to {where}: {type(exc).__name__}: {exc}; check the "
                                    "address (`ray status` on the head node), or run without Ray") from None
        return ray

    def workers(self) -> int:
        ray = self.connect()
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map(self, work: Work, shared: Any, items: Iterable[Any], *, setup: Callable[[Any], Any] | None = None,
            names: Callable[[int, Any], str] | None = None, on_done: OnDone | None = None,
            keep: bool = True) -> list[Any]:
        ray = self.connect()
        task = _remote_task(ray)
        shared_ref = [ray.put(shared)]  # in a list: tasks receive the reference and fetch it once per worker
        limit = self.pending or 2 * self.workers()
        names = names or (lambda k, _: f"task {k}")
        results: dict[int, Any] = {}
        running: dict[Any, tuple[int, str]] = {}

        def finish(ref) -> None:
            k, name = running.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - every failure becomes onnxprune's own error
                for other in running:
                    ray.cancel(other)
                raise task_error(name, exc) from None
            if keep:
                results[k] = result
            if on_done is not None:
                on_done(k, result)

        for k, item in enumerate(items):
            name = names(k, item)
            running[task.options(name=name[:200]).remote(shared_ref, setup, work, item)] = (k, name)
            while len(running) >= limit:
                done, _ = ray.wait(list(running), num_returns=1)
                finish(done[0])
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            finish(done[0])
        return [results[k] for k in range(len(results))]


def fold(executor: Executor, work: Work, shared: Any, items: Iterable[Any], combine: Callable[[Any, Any], Any], *,
         setup: Callable[[Any], Any] | None = None, names: Callable[[int, Any], str] | None = None,
         on_done: OnDone | None = None) -> Any:
    """`executor.map`, with the results combined IN ITEM ORDER as they finish (`combine(total, next)` -> total;
    the first result starts the total) instead of all kept: only results waiting for an earlier item are held
    (on Ray at most the tasks in flight), so memory does not grow with the number of items. None for no items."""
    waiting: dict[int, Any] = {}
    state: dict[str, Any] = {"next": 0, "total": None}

    def done(k: int, result: Any) -> None:
        if on_done is not None:
            on_done(k, result)
        waiting[k] = result
        while state["next"] in waiting:
            value = waiting.pop(state["next"])
            state["total"] = value if state["next"] == 0 else combine(state["total"], value)
            state["next"] += 1

    executor.map(work, shared, items, setup=setup, names=names, on_done=done, keep=False)
    return state["total"]


def import_ray():
    try:
        import ray
    except ImportError:
        raise MissingExtraError('executor="ray" needs Ray, which is not installed: pip install "onnxprune[ray]" '
                                "(or pip install ray); the default in-process executor needs nothing") from None
    return ray


def task_error(name: str, exc: BaseException) -> OnnxPruneError:
    """The error a failed task raises on the caller's side: its own OnnxPruneError type (a copy, message
    prefixed with the task's name), or TaskError naming the task and the original exception."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, OnnxPruneError):
        error = copy.copy(cause)
        error.args = (f"{name}: {cause}",) + tuple(cause.args[1:])
        return error
    return TaskError(name, f"{type(cause).__name__}: {cause}")


def chunks(items: Iterable[T], size: int | None) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter); size None: one list of everything."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if size is not None and len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --------------------------------------------------------------------------- inside a Ray worker

_CONTEXTS: dict[tuple[str, Any], Any] = {}  # (object id, setup) -> context: built once per worker process


_THREADS: contextvars.ContextVar[int | None] = contextvars.ContextVar("onnxprune_task_threads", default=None)


def _run_task(shared_ref: list, setup: Callable[[Any], Any] | None, work: Work, item: Any) -> Any:
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    token = _THREADS.set(max(1, int(cpus)))
    try:
        key = (shared_ref[0].hex(), setup)
        if key not in _CONTEXTS:
            _CONTEXTS.clear()  # one job at a time: keep only the newest context
            shared = ray.get(shared_ref[0])
            _CONTEXTS[key] = shared if setup is None else setup(shared)
        return work(_CONTEXTS[key], item)
    finally:
        _THREADS.reset(token)


@functools.cache
def _remote_task(ray):
    return ray.remote(num_cpus=1, max_retries=0)(_run_task)


def task_threads() -> int | None:
    """onnxruntime threads for a session built inside a Ray task (the CPUs Ray gave it), None elsewhere (the
    runtime's default)."""
    return _THREADS.get()


# --------------------------------------------------------------------------- choosing

_CURRENT: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("onnxprune_executor", default=None)


def resolve(executor: Any = None) -> Executor:
    """The executor meant by `executor` (None: the one in scope, else in-process)."""
    if executor is None:
        return _CURRENT.get() or InProcess()
    if isinstance(executor, str):
        if executor.lower() in ("in-process", "inprocess", "local"):
            return InProcess()
        if executor.lower() == "ray":
            return RayExecutor()
        raise InvalidRequestError(f"unknown executor {executor!r}: use 'in-process' (default), 'ray', or "
                                  "onnxprune.executor.RayExecutor(address=...)")
    if callable(getattr(executor, "map", None)):
        return executor
    raise InvalidRequestError(f"executor must be 'in-process', 'ray' or an executor object, not "
                              f"{type(executor).__name__}")


def current() -> Executor:
    """The executor in scope (set by a function decorated with @uses_executor), else in-process."""
    return resolve(None)


@contextlib.contextmanager
def scope(executor: Any) -> Iterator[Executor]:
    """Within the block, `current()` is `executor`."""
    token = _CURRENT.set(resolve(executor))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def uses_executor(fn: Callable[..., R]) -> Callable[..., R]:
    """Give `fn` a keyword argument `executor=None`: its calibration statistics (calibration.collect,
    reconstruction) run on that executor."""

    @functools.wraps(fn)
    def wrapper(*args: Any, executor: Any = None, **kwargs: Any) -> R:
        if executor is None:
            return fn(*args, **kwargs)
        with scope(executor):
            return fn(*args, **kwargs)

    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    extra = inspect.Parameter("executor", inspect.Parameter.KEYWORD_ONLY, default=None)
    at = next((k for k, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    wrapper.__signature__ = signature.replace(parameters=params[:at] + [extra] + params[at:])
    wrapper.__doc__ = (fn.__doc__ or "").rstrip() + EXECUTOR_DOC
    return wrapper


EXECUTOR_DOC = """

    executor: where calibration statistics are collected (data criteria, compensation, reconstruction): None
        (this process, or the executor in scope), "ray" (Ray tasks over shards of the calibration batches; same
        result), or an executor object (onnxprune.executor.RayExecutor(address=...)).
    """
