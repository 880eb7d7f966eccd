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
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.pop("MLFLOW_TRACKING_URI", None)

@pytest.fixture(scope="session")
def demo_network(tmp_path_factory) -> dict[str, Path]:
    """A small two-site demo network, generated once per session."""
    from forewarn.records.demo import generate_network

    return generate_network(tmp_path_factory.mktemp("network"), people=3000, seed=11)
