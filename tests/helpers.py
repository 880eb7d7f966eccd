"""Small helpers shared by the tests (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from forewarn.records import schema

REPO = Path(__file__).resolve().parents[1]


def write_events(folder: Path, rows: list[tuple], shard: str = "0") -> Path:
    """Write ``(subject_id, time, code, numeric_value)`` rows as a MEDS shard."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            schema.SUBJECT_ID: pa.array([r[0] for r in rows], pa.int64()),
            schema.TIME: pa.array([r[1] for r in rows], pa.timestamp("us")),
            schema.CODE: pa.array([r[2] for r in rows], pa.string()),
            schema.NUMERIC_VALUE: pa.array([r[3] for r in rows], pa.float32()),
            schema.TEXT_VALUE: pa.array([None] * len(rows), pa.string()),
        }
    )
    path = folder / f"{shard}.parquet"
    pq.write_table(schema.align(table, schema.DATA_SCHEMA), path)
    return path


def label_table(rows: list[tuple[int, datetime, bool]]) -> pa.Table:
    return pa.table(
        {
            schema.SUBJECT_ID: pa.array([r[0] for r in rows], pa.int64()),
            schema.PREDICTION_TIME: pa.array([r[1] for r in rows], pa.timestamp("us")),
            schema.BOOLEAN_VALUE: pa.array([r[2] for r in rows], pa.bool_()),
        }
    )


def fake_ssn(area: str, group: str, serial: str) -> str:
    """A synthetic, SSN-shaped test string built at run time (no SSN-shaped literal is committed)."""
    return f"{area}-{group}-{serial}"


@contextmanager
def flow_workdir(work: Path, prefect_home: Path) -> Iterator[Path]:
    """The environment a test runs the nightly flow in: its own Prefect home, MLflow's
    default store (``mlruns/`` under ``work``, the working directory), no tracking URI or
    artifact root left by an earlier test; all restored afterwards."""
    names = ("PREFECT_HOME", "MLFLOW_TRACKING_URI", "FOREWARN_ARTIFACT_ROOT")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["PREFECT_HOME"] = str(prefect_home)
    for k in names[1:]:
        os.environ.pop(k, None)
    cwd = Path.cwd()
    os.chdir(work)
    try:
        yield work
    finally:
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def store_client(work: Path):
    """The MLflow client of the default store of a flow run in ``work`` (``flow_workdir``),
    also made the process's tracking URI."""
    import mlflow

    uri = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)
