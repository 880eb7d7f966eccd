"""executor: dask, the whole nightly flow: a real multi-process ``distributed.LocalCluster``
runs the per-part site pulls and the featurization shards as Prefect tasks through
prefect-dask's ``DaskTaskRunner`` (XGBoost trains with ``xgboost.dask``), against a local
run of the same study. The pulled events and the feature matrix are identical, and the
held-out AUROC is within 0.01.

The Dask workers are separate processes that report their task runs to the Prefect API,
so they get the test harness's server address through the environment.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

TASK = "t2d_2y"


def study_for(work: Path, network: dict[str, Path], executor: dict):
    from forewarn.flows.study import parse_study

    return parse_study(
        {
            "name": "dask-flow",
            "demo": True,
            "tasks": [TASK],
            "sites": [{"name": n, "source": {"location": str(p)}} for n, p in network.items()],
            "evaluation": {"bootstrap": 20, "shap_rows": 100},
            # subsample 1: xgboost.dask draws row samples per worker, so with subsampling two
            # runs differ as two seeds do (tests/test_dask.py); without it they must agree. The
            # blend's weight is chosen on the tuning rows: the cross-fitted one runs locally anyway.
            "models": {"n_jobs": 1, "search": {"trials": 0}, "xgboost": {"subsample": 1.0}, "blend": "tuned"},
            "validation": {"designs": ["internal", "network"]},
            "retries": {"attempts": 0},
            "executor": executor,
            "tracking": {"uri": f"sqlite:///{work / 'mlflow.db'}", "artifact_root": str(work / "artifacts")},
        },
        base_dir=work,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_network, prefect_server):
    from distributed import LocalCluster

    from forewarn.flows.nightly import run_nightly

    work = tmp_path_factory.mktemp("dask-flow")
    # configure() exports the study's store for processes started later: restore it all after.
    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_API_URL", "MLFLOW_TRACKING_URI",
                                            "FOREWARN_ARTIFACT_ROOT")}
    os.environ["PREFECT_HOME"] = str(work / "prefect-home")
    try:
        os.environ["PREFECT_API_URL"] = prefect_server  # inherited by the worker processes
        cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0",
                               scheduler_port=0)
        try:
            local_state, local = run_nightly(study_for(work / "local", demo_network, {"kind": "local"}))
            dask_state, on_dask = run_nightly(study_for(work / "dask", demo_network, {
                "kind": "dask", "scheduler_address": cluster.scheduler_address, "pull_parts": 2}))
            ran_on_dask = set(cluster.scheduler.task_prefixes)  # task name prefixes the scheduler ran
            task_runs = _task_run_names(dask_state.state_details.flow_run_id)
        finally:
            cluster.close()
        yield {"work": work, "local": (local_state, local), "dask": (dask_state, on_dask),
               "task_runs": task_runs, "prefixes": ran_on_dask}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _task_run_names(flow_run_id) -> Counter:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return Counter(run.name.rsplit("-", 1)[0] for run in task_runs if run.state and run.state.is_completed())


def _stage_dir(work: Path, site: str, stage: str) -> Path:
    found = sorted((work / "sites" / site / "work" / "stages" / stage).glob("*/.stage.json"))
    assert len(found) == 1, (site, stage, found)
    return found[0].parent


def _events(folder: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))]
    order = ["subject_id", "time", "code", "numeric_value", "unit"]
    return pd.concat(frames).sort_values(order, na_position="first").reset_index(drop=True)


def test_both_runs_publish_every_site(runs):
    for kind in ("local", "dask"):
        state, results = runs[kind]
        assert state.is_completed(), (kind, state)
        assert sorted((r.site, r.status) for r in results) == [("academic", "published"), ("community", "published")]


def test_pulls_and_shards_ran_as_prefect_tasks_on_the_cluster(runs):
    names = runs["task_runs"]
    assert names["pull"] == 4  # 2 sites x 2 parts
    assert names["merge pull parts"] == 2
    assert names["featurize shard"] >= 2
    # The DaskTaskRunner sent those tasks to the cluster's workers (the scheduler saw them).
    # (Dask names a task by its Python function.)
    assert {"pull_task", "featurize_shard"} <= runs["prefixes"], sorted(runs["prefixes"])


def test_parted_pull_gives_the_same_events_and_report(runs):
    import json

    for site in ("academic", "community"):
        local = _stage_dir(runs["work"] / "local", site, "pull") / "pull"
        merged = _stage_dir(runs["work"] / "dask", site, "pull") / "pull"
        assert sorted(p.name for p in (merged / "events").glob("*.parquet")) == ["0-0.parquet", "1-0.parquet"]
        pd.testing.assert_frame_equal(_events(merged / "events"), _events(local / "events"))
        a, b = (json.loads((d / "pull_report.json").read_text()) for d in (local, merged))
        assert b.pop("parts") == 2
        a.pop("shards"), b.pop("shards")
        assert a == b
        assert json.loads((local / "quality.json").read_text()) == json.loads((merged / "quality.json").read_text())


def test_feature_matrix_is_identical(runs):
    from forewarn.features.featurize import FeatureMatrix

    for site in ("academic", "community"):
        local = FeatureMatrix(_stage_dir(runs["work"] / "local", site, f"features-{TASK}"))
        on_dask = FeatureMatrix(_stage_dir(runs["work"] / "dask", site, f"features-{TASK}"))
        X_local, rows_local, cols_local = local.load()
        X_dask, rows_dask, cols_dask = on_dask.load()
        assert X_local.shape == X_dask.shape and X_local.nnz > 0
        for part in ("data", "indices", "indptr"):
            np.testing.assert_array_equal(getattr(X_dask, part), getattr(X_local, part), err_msg=f"{site} {part}")
        pd.testing.assert_frame_equal(rows_dask, rows_local)
        pd.testing.assert_frame_equal(cols_dask, cols_local)


def test_auroc_within_0_02_of_the_local_run(runs):
    # as tests/test_dask.py's AUROC_TOLERANCE: the cluster's bins come from a merged sketch
    local = {r.site: r.metrics["held_out/auroc"] for r in runs["local"][1]}
    on_dask = {r.site: r.metrics["held_out/auroc"] for r in runs["dask"][1]}
    assert local.keys() == on_dask.keys() == {"academic", "community"}
    for site in local:
        assert local[site] > 0.7
        assert on_dask[site] == pytest.approx(local[site], abs=0.02), site


def test_network_model_on_dask_is_the_local_one(runs):
    """The network design under the Dask executor: the sites' shared-column features are
    built on the cluster, the model trains in the flow process, and it equals the local
    run's: the same trees, the same held-out numbers at each site."""
    import json

    from forewarn.flows.cache import _decode
    from forewarn.models.federated import FederatedModel

    models = {kind: FederatedModel.load(_stage_dir(runs["work"] / kind, "academic", f"network-model-{TASK}"))
              for kind in ("local", "dask")}
    assert models["dask"].trees == models["local"].trees and models["dask"].n_trees == models["local"].n_trees
    for site in ("academic", "community"):
        folders = {kind: _stage_dir(runs["work"] / kind, site, f"network-{TASK}") for kind in ("local", "dask")}
        records = {kind: _decode(json.loads((d / ".stage.json").read_text())["result"], d) for kind, d in folders.items()}
        assert records["dask"]["as_shipped"] == records["local"]["as_shipped"], site
        assert 0.5 < records["local"]["as_shipped"]["auroc"] <= 1
