"""Where the work runs: on this machine, or on a Dask cluster (``executor: dask``).

This is the one module that knows about Dask's client and Prefect's Dask task runner.
With ``executor: dask`` the nightly flow runs on prefect-dask's ``DaskTaskRunner``
(``task_runner``): the per-part site pulls (``pull_parts``) are submitted as Prefect
tasks, and ``featurize(..., map_shards=task_mapper())`` submits every featurization shard
as a Prefect task too, so both run on the cluster's workers and show in the Prefect UI.
``train_models(..., client=client)`` trains XGBoost with ``xgboost.dask`` from the flow
process (DESIGN.md section 8). Outside a flow, ``shard_mapper(client)`` runs shards on a
cluster through a plain ``distributed`` client.

The cluster must see the same files as the flow process (a shared filesystem): shard
jobs read the events' parquet files by path and pulls write stage folders. Workers need
the same Python environment (forewarn, xgboost, scipy at the same versions) and
``PREFECT_API_URL``.

Importing this module is cheap: ``distributed``, ``prefect`` and ``prefect_dask`` are
imported only when they are used.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from forewarn.records.config import Strict

if TYPE_CHECKING:
    from distributed import Client
    from prefect.task_runners import TaskRunner

_ADDRESS = re.compile(r"^(?:[a-z][a-z0-9+.-]*://)?\S+$")


class ExecutorSettings(Strict):
    """``executor:`` in a study: ``local`` (default) or ``dask`` with a scheduler address."""

    kind: Literal["local", "dask"] = Field("local", description="local: this machine; dask: a Dask cluster")
    scheduler_address: str | None = Field(
        None, description="the Dask scheduler's address, e.g. tcp://10.0.0.5:8786 (needed by kind: dask)"
    )
    pull_parts: int = Field(
        1, ge=1, le=1024,
        description="split each site's pull into this many parts by subject, each its own task (on the cluster "
        "with kind: dask), then merge them; 1 pulls each site in one task",
    )

    @field_validator("scheduler_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not _ADDRESS.match(value.strip() or " "):
            raise ValueError(
                f"executor.scheduler_address must be a Dask scheduler address such as 'tcp://10.0.0.5:8786'; got {value!r}."
            )
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _dask_needs_address(self) -> ExecutorSettings:
        if self.kind == "dask" and not self.scheduler_address:
            raise ValueError(
                "executor.scheduler_address must be set when executor.kind is 'dask'; got None. "
                "Start a scheduler (`dask scheduler`) and workers (`dask worker tcp://HOST:8786`), then add "
                "`scheduler_address: tcp://HOST:8786` under `executor:` in the study (or use kind: local)."
            )
        return self

    @property
    def is_dask(self) -> bool:
        return self.kind == "dask"


def task_runner(settings: ExecutorSettings) -> TaskRunner:
    """The Prefect task runner for ``settings``: a ``DaskTaskRunner`` connected to the
    scheduler for ``dask``, else Prefect's default ``ThreadPoolTaskRunner``.

    Only tasks that are ``.submit()``-ted go through it; tasks called directly run in
    the flow process. Tasks running on Dask workers report to the Prefect API, so a
    Dask task runner needs a real Prefect server (``PREFECT_API_URL``): with the
    ephemeral one, every worker process starts its own server on one SQLite file and
    hangs. That is checked here.
    """
    if not settings.is_dask:
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner()
    from prefect.settings import PREFECT_API_URL
    from prefect_dask import DaskTaskRunner

    if not PREFECT_API_URL.value():
        raise ValueError(
            "PREFECT_API_URL must be set to run Prefect tasks on Dask (executor: dask); got None. "
            "Start a server (`prefect server start`) and `export PREFECT_API_URL=http://127.0.0.1:4200/api`, "
            "or call the tasks directly so that they run in the flow process."
        )
    return DaskTaskRunner(address=settings.scheduler_address)


@contextmanager
def dask_client(settings: ExecutorSettings, *, timeout: str | float = "30s") -> Iterator[Client]:
    """A ``distributed.Client`` connected to ``settings.scheduler_address``.

    Reuses the client of the worker this runs on, or the default client, when either is
    connected to that scheduler (and then leaves it open); otherwise opens a client and
    closes it on exit.
    """
    if not settings.is_dask or not settings.scheduler_address:
        raise ValueError(f"dask_client needs executor.kind 'dask' with a scheduler_address; got {settings.kind!r}.")
    from distributed import Client

    existing = _existing_client(settings.scheduler_address)
    if existing is not None:
        yield existing
        return
    client = Client(settings.scheduler_address, timeout=timeout, set_as_default=False)
    try:
        yield client
    finally:
        client.close()


@contextmanager
def maybe_dask_client(settings: ExecutorSettings) -> Iterator[Client | None]:
    """``dask_client(settings)`` for ``executor: dask``, ``None`` for ``local``::

        with maybe_dask_client(study.executor) as client:
            featurize(..., map_shards=shard_mapper(client) if client else None)
            train_models(..., client=client)
    """
    if not settings.is_dask:
        yield None
        return
    with dask_client(settings) as client:
        yield client


def _existing_client(address: str) -> Client | None:
    from distributed import default_client, get_client, get_worker
    from distributed.comm import resolve_address

    try:
        wanted = resolve_address(address)
    except ValueError:
        wanted = address
    try:
        worker = get_worker()
    except ValueError:
        pass
    else:
        if worker.scheduler.address == wanted:
            return get_client(wanted)
    try:
        client = default_client()
    except ValueError:
        return None
    scheduler = getattr(client, "scheduler", None)
    if client.status == "running" and scheduler is not None and scheduler.address == wanted:
        return client
    return None


def shard_mapper(client: Client) -> Callable[[Callable, list], list]:
    """A ``map_shards`` for ``featurize``: ``func(job)`` for every job on ``client``'s
    cluster, results in job order.

    Job items that every job shares (the label subjects and times, one array each of
    8 bytes per label row, and the plan) are sent once to every worker (every worker
    needs them, and holding them everywhere keeps the scheduler from piling the jobs
    onto the one worker that has them) instead of being pickled into every task. The
    scattered data and results are released when the call returns.
    """

    def map_shards(func: Callable[[tuple], Any], jobs: list) -> list:
        jobs = [tuple(job) for job in jobs]
        if not jobs:
            return []
        shared = _shared_positions(jobs) if len(jobs) > 1 else []
        scattered = {i: client.scatter(jobs[0][i], broadcast=True, hash=False) for i in shared}
        columns = [[scattered[i] if i in scattered else job[i] for job in jobs] for i in range(len(jobs[0]))]
        run = uuid.uuid4().hex[:8]
        futures = client.map(
            _call, [func] * len(jobs), *columns, key=[f"featurize-shard-{run}-{n}" for n in range(len(jobs))], pure=False
        )
        try:
            return client.gather(futures)
        finally:
            for future in futures:
                future.release()
            for future in scattered.values():
                future.release()

    map_shards.description = "dask"  # type: ignore[attr-defined]  # shown in the featurize progress line
    return map_shards


def task_mapper() -> Callable[[Callable, list], list] | None:
    """A ``map_shards`` for ``featurize`` that submits every shard job as a Prefect task
    (``featurize shard``) to the running flow's task runner: with ``executor: dask`` that
    is prefect-dask's ``DaskTaskRunner``, so the shards run on the cluster and show in
    the Prefect UI as task runs. ``None`` outside a flow run (``featurize`` then runs
    its shards itself). Results come back in job order."""
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return None

    def map_shards(func: Callable[[tuple], Any], jobs: list) -> list:
        futures = [_shard_task().submit(func, tuple(job)) for job in jobs]
        return [future.result() for future in futures]

    map_shards.description = "prefect task runner"  # type: ignore[attr-defined]
    return map_shards


_SHARD_TASK = None


def _shard_task():
    global _SHARD_TASK
    if _SHARD_TASK is None:
        from prefect import task
        from prefect.cache_policies import NO_CACHE

        @task(name="featurize shard", cache_policy=NO_CACHE)
        def featurize_shard(func: Callable[[tuple], Any], job: tuple) -> Any:
            return func(job)

        _SHARD_TASK = featurize_shard
    return _SHARD_TASK


def _shared_positions(jobs: list[tuple]) -> list[int]:
    """Positions whose item is the very same object in every job."""
    width = len(jobs[0])
    if any(len(job) != width for job in jobs):
        return []
    return [i for i in range(width) if all(job[i] is jobs[0][i] for job in jobs[1:])]


def _call(func: Callable[[tuple], Any], *items: Any) -> Any:
    """Runs on a worker: rebuild the job tuple (scattered items arrive resolved)."""
    return func(items)
