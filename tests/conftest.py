"""Shared fixtures: an isolated environment, a tiny demo network, small golden helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Isolate Prefect and silence telemetry before anything imports Prefect or MLflow.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.pop("MLFLOW_TRACKING_URI", None)

# The files that run whole nightly flows, longest first (seconds on 2 fast cores, session
# 36: resume 177, flow_e2e 145, champion_provenance 101, dask_flow 91, retrained_alike 46,
# small_site 43, registered_validation 36, score 28): with ``-n 2 --dist loadfile``
# (``./dev test``) each worker starts on one of the two longest and takes the rest as it
# frees, so that both end together. A small file sits between them and the next long one:
# xdist queues two files a worker from the start.
LONG_FILES = ("test_resume.py", "test_flow_e2e.py", "test_cache.py", "test_dask_flow.py", "test_champion_provenance.py",
              "test_retrained_alike.py", "test_small_site.py", "test_registered_validation.py", "test_score.py",
              "test_faults.py", "test_people_ledger.py")


def pytest_collection_modifyitems(config, items):
    """Run the long files first, in ``LONG_FILES``'s order; the rest keep theirs."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def demo_network(tmp_path_factory) -> dict[str, Path]:
    """A small two-site demo network, generated once per session."""
    from forewarn.records.demo import generate_network

    return generate_network(tmp_path_factory.mktemp("network"), people=6000, seed=11)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One Prefect test server (``prefect_test_harness``) for every flow this test process
    runs, rather than one per file: each takes about 10 seconds to start. Yields its API
    URL. Each flow test still runs in a working folder and Prefect home of its own
    (``helpers.flow_workdir``); flow and task runs are told apart by their ids."""
    saved = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-server-home"))
    try:
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=180):
            yield PREFECT_API_URL.value()
    finally:
        if saved is None:
            os.environ.pop("PREFECT_HOME", None)
        else:
            os.environ["PREFECT_HOME"] = saved


PG_URL = os.environ.get("FOREWARN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_schema():
    """A fresh schema on the test PostgreSQL server, dropped afterwards.

    Skipped with a reason when no server answers, unless FOREWARN_REQUIRE_POSTGRES=1
    (as in .ci/run), where a missing server fails the test.
    """
    import uuid

    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any connection problem means "no server"
        engine.dispose()
        message = f"no PostgreSQL server at {PG_URL} ({type(exc).__name__}); set FOREWARN_TEST_POSTGRES_URL"
        if os.environ.get("FOREWARN_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    name = f"forewarn_test_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    try:
        yield engine, name
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        engine.dispose()


@pytest.fixture
def restore_tracking():
    """configure() points MLflow (and the environment) at a store: put both back afterwards."""
    import mlflow

    from forewarn.flows import tracking

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", tracking.ARTIFACT_ROOT_ENV)}
    yield
    mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
