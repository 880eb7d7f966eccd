"""executor: dask — shards featurized on a real multi-process Dask cluster give the same
matrix as a local run, and XGBoost trained with ``xgboost.dask`` scores like the local one."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from forewarn.features.featurize import FeatureConfig, featurize
from forewarn.flows.executor import (
    ExecutorSettings,
    dask_client,
    maybe_dask_client,
    shard_mapper,
    task_runner,
)
from forewarn.models.train import ModelConfig, load_primary, load_xgboost, train_models
from forewarn.records import schema

SITE = "community"  # the larger demo site: ~1,800 subjects, 3 event shards below


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0", scheduler_port=0
    )
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def client(cluster):
    with dask_client(ExecutorSettings(kind="dask", scheduler_address=cluster.scheduler_address)) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, demo_network):
    from forewarn.features.labels import label_dataset, load_task
    from forewarn.records.deid import DeidConfig, load_secret
    from forewarn.records.omop import pull_omop

    work = tmp_path_factory.mktemp("dask")
    pull = pull_omop(
        demo_network[SITE], work / "pull", site=SITE, config=DeidConfig(load_secret(SITE, demo=True)), shard_subjects=600
    )
    assert len(list(pull.events_dir.glob("*.parquet"))) >= 2  # sharding is exercised
    labels = label_dataset(pull.events_dir, load_task("t2d_2y"), work / "labels")
    table, splits, _ = labels.load()
    return work, pull, table, splits


@pytest.fixture(scope="module")
def matrices(dataset, client):
    work, pull, table, splits = dataset
    config = FeatureConfig(n_workers=1)
    local = featurize(pull.events_dir, table, splits, work / "local", config, codes_path=pull.codes_path)
    on_dask = featurize(
        pull.events_dir, table, splits, work / "dask", config, codes_path=pull.codes_path, map_shards=shard_mapper(client)
    )
    return local, on_dask


def test_feature_matrix_on_dask_is_identical(matrices):
    local, on_dask = matrices
    X_local, rows_local, cols_local = local.load()
    X_dask, rows_dask, cols_dask = on_dask.load()
    assert X_local.shape == X_dask.shape and X_local.nnz > 0
    for part in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(X_dask, part), getattr(X_local, part), err_msg=part)
    assert X_dask.dtype == X_local.dtype
    pd.testing.assert_frame_equal(rows_dask, rows_local)
    pd.testing.assert_frame_equal(cols_dask, cols_local)
    assert (on_dask.dir / "shape.json").read_text() == (local.dir / "shape.json").read_text()


def _held_out_auroc(trained) -> float:
    pred = pd.read_parquet(trained.predictions_path("xgboost_uncalibrated"))
    held = pred[schema.SPLIT] == schema.HELD_OUT
    return float(roc_auc_score(pred.loc[held, schema.BOOLEAN_VALUE], pred.loc[held, schema.PREDICTED_BOOLEAN_PROBABILITY]))


def _train_both(matrices, client, tmp_path, config):
    local_matrix, _ = matrices
    local = train_models(local_matrix, tmp_path / "local", config)
    on_dask = train_models(local_matrix, tmp_path / "dask", config, client=client)
    return local, on_dask


# The cluster's histogram bins come from a quantile sketch merged across its workers, the
# local fit's from one process: the trees differ a little even with every row in every
# tree. On the tests' network the two held-out AUROCs have differed by up to 0.011 (T2D,
# five times per person); a fit that lost its rows' order or labels would be near 0.5.
AUROC_TOLERANCE = 0.02


def test_xgboost_dask_matches_local(matrices, client, tmp_path):
    # Row subsampling is drawn per worker under xgboost.dask, so with subsample < 1 the
    # two runs differ like two seeds do (see the next test); without it they agree up to
    # the sketch (AUROC_TOLERANCE).
    config = ModelConfig(n_jobs=1, blend="tuned", xgboost={"subsample": 1.0})
    local, on_dask = _train_both(matrices, client, tmp_path, config)
    assert _held_out_auroc(on_dask) == pytest.approx(_held_out_auroc(local), abs=AUROC_TOLERANCE)
    assert _held_out_auroc(local) > 0.7

    # Saved as the local path saves: XGBoost JSON that load_xgboost reads, same layout.
    # (The primary model is those trees blended with the L1 at the weight chosen on tuning.)
    assert load_xgboost(on_dask.xgboost_path).n_features_in_ == matrices[0].load()[0].shape[1]
    X, _, _ = matrices[0].load()
    pred = pd.read_parquet(on_dask.predictions_path("xgboost_uncalibrated"))
    np.testing.assert_allclose(load_primary(on_dask).probability(X), pred[schema.PREDICTED_BOOLEAN_PROBABILITY], rtol=1e-6)
    saved = {name: json.loads(t.xgboost_path.read_text()) for name, t in (("local", local), ("dask", on_dask))}
    assert saved["dask"].keys() == saved["local"].keys()
    assert saved["dask"]["learner"]["attributes"].keys() == saved["local"]["learner"]["attributes"].keys()
    assert saved["dask"]["learner"]["learner_model_param"] == saved["local"]["learner"]["learner_model_param"]
    for path in ("calibration_path", "l1_path", "age_sex_path", "summary_path"):
        assert getattr(on_dask, path).is_file(), path
    summary = {name: json.loads(t.summary_path.read_text()) for name, t in (("local", local), ("dask", on_dask))}
    assert summary["dask"]["xgboost"]["scale_pos_weight"] == summary["local"]["xgboost"]["scale_pos_weight"]
    assert summary["dask"]["l1_logistic"] == summary["local"]["l1_logistic"]  # baselines stay local


def test_xgboost_dask_boosts_from_the_offset_as_the_local_fit_does(matrices, client, tmp_path):
    # offset: l1 (the rare-outcome default) with every row in every tree: the cluster's
    # trees start from the same out-of-fold L1 log-odds as the local ones.
    config = ModelConfig(n_jobs=1, blend="tuned", offset="l1", xgboost={"subsample": 1.0})
    local, on_dask = _train_both(matrices, client, tmp_path, config)
    assert on_dask.offset_path.read_text() == local.offset_path.read_text()
    assert _held_out_auroc(on_dask) == pytest.approx(_held_out_auroc(local), abs=AUROC_TOLERANCE)
    X, _, _ = matrices[0].load()
    pred = pd.read_parquet(on_dask.predictions_path("xgboost_uncalibrated"))
    np.testing.assert_allclose(load_primary(on_dask).probability(X), pred[schema.PREDICTED_BOOLEAN_PROBABILITY], rtol=1e-6)


def test_xgboost_dask_default_config_is_within_seed_noise(matrices, client, tmp_path):
    # The default subsample=0.8: per-worker sampling moves held-out AUROC on this small
    # set (~220 rows, ~24 positives) about as much as changing the seed (~0.04 spread).
    local, on_dask = _train_both(matrices, client, tmp_path, ModelConfig(n_jobs=1, blend="tuned"))
    assert _held_out_auroc(on_dask) == pytest.approx(_held_out_auroc(local), abs=0.05)


def test_dask_client_reuses_a_client_to_the_same_scheduler(cluster):
    from distributed import Client

    with Client(cluster.scheduler_address, set_as_default=True) as default:
        with dask_client(ExecutorSettings(kind="dask", scheduler_address=cluster.scheduler_address)) as got:
            assert got is default
        assert default.status == "running"  # not closed by dask_client
    with dask_client(ExecutorSettings(kind="dask", scheduler_address=cluster.scheduler_address)) as fresh:
        assert fresh is not default and fresh.status == "running"
    assert fresh.status == "closed"
    with maybe_dask_client(ExecutorSettings()) as none:
        assert none is None


def test_shard_mapper_scatters_shared_items_once(client):
    def sum_job(job):  # nested, so it is pickled by value (the workers cannot import tests/)
        i, values = job
        assert isinstance(values, np.ndarray)  # the scattered item arrives as itself
        return int(values.sum()) + i

    shared = np.arange(1000)
    jobs = [(i, shared) for i in range(4)]
    assert shard_mapper(client)(sum_job, jobs) == [int(shared.sum()) + i for i in range(4)]
    assert shard_mapper(client)(sum_job, []) == []
    deadline = time.monotonic() + 30
    while client.who_has() and time.monotonic() < deadline:  # releases reach the scheduler asynchronously
        time.sleep(0.1)
    assert not client.who_has()  # scattered items and results were released


def test_executor_settings_errors_name_the_key():
    assert ExecutorSettings().kind == "local"
    with pytest.raises(ValueError, match=r"executor\.scheduler_address must be set when executor\.kind is 'dask'"):
        ExecutorSettings(kind="dask")
    with pytest.raises(ValueError, match=r"executor\.scheduler_address must be a Dask scheduler address"):
        ExecutorSettings(kind="dask", scheduler_address="tcp://host name")
    with pytest.raises(ValueError, match="scheduler_adress"):
        ExecutorSettings.model_validate({"kind": "dask", "scheduler_adress": "tcp://h:8786"})


def test_study_takes_an_executor(tmp_path):
    from forewarn.flows.study import parse_study

    data = {"name": "s", "sites": [{"name": "a", "source": {"location": "a.duckdb"}}], "tasks": ["t2d_2y"]}
    assert parse_study(data, base_dir=tmp_path).executor.kind == "local"
    study = parse_study({**data, "executor": {"kind": "dask", "scheduler_address": "tcp://10.0.0.5:8786"}}, base_dir=tmp_path)
    assert study.executor.scheduler_address == "tcp://10.0.0.5:8786"
    with pytest.raises(ValueError, match=r"executor\.scheduler_address must be set"):
        parse_study({**data, "executor": {"kind": "dask"}}, base_dir=tmp_path)
    assert study.executor.pull_parts == 1
    assert parse_study({**data, "executor": {"pull_parts": 4}}, base_dir=tmp_path).executor.pull_parts == 4
    with pytest.raises(ValueError, match=r"executor.pull_parts: Input should be greater than or equal to 1"):
        parse_study({**data, "executor": {"pull_parts": 0}}, base_dir=tmp_path)


def test_task_runner():
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    assert isinstance(task_runner(ExecutorSettings()), ThreadPoolTaskRunner)
    settings = ExecutorSettings(kind="dask", scheduler_address="tcp://127.0.0.1:8786")
    with temporary_settings(updates={PREFECT_API_URL: None}):
        with pytest.raises(ValueError, match="PREFECT_API_URL must be set"):
            task_runner(settings)
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        runner = task_runner(settings)
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://127.0.0.1:8786"

