"""Every validation design logs the same metric names, params and tags, so that MLflow's
compare view lines internal, external and temporal runs up (the design is a tag)."""

from __future__ import annotations

import math

import pytest

from forewarn.flows import tracking

RECORD = {"auroc": 0.81, "auroc_ci_low": 0.74, "auroc_ci_high": 0.87, "auprc": 0.31, "auprc_ci_low": 0.22,
          "auprc_ci_high": 0.4, "brier": 0.05, "prevalence": 0.06, "mean_predicted": 0.07, "calibration_slope": 1.1,
          "calibration_in_the_large": -0.1, "ece": 0.01, "ici": 0.012, "e50": 0.009, "e90": 0.03, "model_based_auroc": 0.78, "n": 500, "events": 30,
          "subjects": 480}


@pytest.fixture
def store(tmp_path, restore_tracking):
    """A fresh SQLite store; MLflow and the environment are put back afterwards."""
    import mlflow

    return mlflow.MlflowClient(tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}"))


def test_a_validation_run_has_the_internal_runs_primary_model_names():
    # What publish logs for an internal run: every model, and the primary one unprefixed.
    internal = tracking.flat_metrics({"xgboost": RECORD, "l1_logistic": RECORD | {"auroc": 0.7}}, "xgboost")
    internal |= tracking.evaluation_metrics(RECORD)
    shipped = tracking.evaluation_metrics(RECORD, model="xgboost")  # an external or temporal run's model
    assert shipped == {k: v for k, v in internal.items() if not k.startswith("held_out/l1_logistic/")}
    for key in ("held_out/auroc", "held_out/auroc_ci_low", "held_out/auroc_ci_high", "held_out/auprc", "held_out/brier",
                "held_out/calibration_slope", "held_out/calibration_in_the_large", "held_out/xgboost/auroc"):
        assert key in shipped
    recalibrated = tracking.evaluation_metrics(RECORD, prefix="held_out/recalibrated")
    assert set(recalibrated) == {f"held_out/recalibrated/{k}" for k in
                                 tracking.METRIC_KEYS + tracking.CALIBRATION_KEYS + tracking.CASE_MIX_KEYS}
    assert not any(k.startswith(("external", "temporal")) for k in shipped | recalibrated)
    # A baseline's paired comparison with the registered model, under the baseline's name.
    paired = {"auroc": {"difference": 0.016, "ci_low": 0.001, "ci_high": 0.034},
              "auprc": {"difference": 0.003, "ci_low": math.nan, "ci_high": 0.033}}
    logged = tracking.flat_metrics({"xgboost": RECORD, "l1_logistic": RECORD | {"paired": paired}}, "xgboost")
    assert {k: v for k, v in logged.items() if "registered_minus" in k} == {
        "held_out/l1_logistic/registered_minus_auroc": 0.016, "held_out/l1_logistic/registered_minus_auroc_ci_low": 0.001,
        "held_out/l1_logistic/registered_minus_auroc_ci_high": 0.034, "held_out/l1_logistic/registered_minus_auprc": 0.003,
        "held_out/l1_logistic/registered_minus_auprc_ci_high": 0.033}  # an undefined bound is left out


def test_suppressed_and_undefined_values_are_left_out_as_for_the_internal_run():
    record = RECORD | {"prevalence": None, "events": None, "auprc_ci_low": math.nan, "calibration_slope": None}
    names = set(tracking.evaluation_metrics(record, model="xgboost"))
    assert not names & {"held_out/prevalence", "held_out/xgboost/events", "held_out/auprc_ci_low", "held_out/calibration_slope"}
    assert set(tracking.flat_metrics({"xgboost": record}, "xgboost")) <= names


def test_log_run_records_tags_params_metrics_and_datasets(store, tmp_path):
    features = tmp_path / "features"
    features.mkdir()
    tags = {"site": "south", "task": "t2d_2y", "task_digest": "a" * 16, "validation_design": "external",
            "data_digest": "b" * 16, "code_version": "0.1+abc", "train_site": "north"}
    run_id = tracking.log_run(
        experiment=tracking.experiment_name("t2d_2y"), run_name="north-model-at-south", tags=tags,
        metrics=tracking.evaluation_metrics(RECORD, model="xgboost"), params={"site": "south", "n_features": 12},
        datasets=[{"name": f"south/t2d_2y/north-columns/{split}", "digest": f"{'c' * 16}-{split}", "source": features,
                   "context": context} for split, context in (("held_out", "test"), ("tuning", "validation"))],
        note="north's model at south",
    )
    assert tags["site"] == "south"  # the caller's tags are left as they were
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["forewarn.complete"] == "true"
    assert {k: run.data.tags[f"forewarn.{k}"] for k in tags} == tags
    assert run.data.params == {"site": "south", "n_features": "12"}
    assert run.data.metrics["held_out/auroc"] == pytest.approx(0.81)
    logged = {d.dataset.name: (d.dataset.digest, {t.key: t.value for t in d.tags}["mlflow.data.context"])
              for d in run.inputs.dataset_inputs}
    assert logged == {"south/t2d_2y/north-columns/held_out": (f"{'c' * 16}-held_out", "test"),
                      "south/t2d_2y/north-columns/tuning": (f"{'c' * 16}-tuning", "validation")}


def test_pull_summary_withholds_every_table_count_when_one_is_small():
    report = {"site": "a", "subjects": 900, "events": 12000, "quarantined": 25, "time_span": ["2010-03-07", "2020-11-30"],
              "tables": {"person": {"read": 905, "kept": 900, "quarantined": 5},
                         "measurement": {"read": 6020, "kept": 6000, "quarantined": 20}}}
    summary = tracking.pull_summary(report)
    # Person's 5 would come back as 905 - 900, as 25 - 20, or as person read - subjects:
    # no per-table count and no total quarantined leaves; subjects and events do.
    assert summary["tables"] == {"person": {"read": None, "kept": None, "quarantined": None},
                                 "measurement": {"read": None, "kept": None, "quarantined": None}}
    assert (summary["subjects"], summary["events"], summary["quarantined"]) == (900, 12000, None)
    assert summary["time_span"] == ["2010-03", "2020-11"]  # each exact date is one person's event
    report["tables"]["person"] |= {"read": 920, "kept": 900, "quarantined": 20}
    report["quarantined"] = 40
    summary = tracking.pull_summary(report)  # nothing small: all shown
    assert summary["tables"] == {"person": {"read": 920, "kept": 900, "quarantined": 20},
                                 "measurement": {"read": 6020, "kept": 6000, "quarantined": 20}}
    assert summary["quarantined"] == 40
    report["tables"]["person"] |= {"read": 900, "kept": 900, "quarantined": 0}
    report["quarantined"] = 20
    assert tracking.pull_summary(report)["tables"]["person"] == {"read": 900, "kept": 900, "quarantined": 0}  # 0 is shown


def test_the_fairness_summary_is_one_metric_per_group_and_measure():
    gaps = [{"group": "race", "metric": "auroc", "gap": 0.1, "low_level": "Asian", "low": 0.7, "high_level": "White",
             "high": 0.8, "levels": 3},
            {"group": "sex", "metric": "sensitivity", "gap": 0.05, "low_level": "M", "low": 0.4, "high_level": "F",
             "high": 0.45, "levels": 2}]
    assert tracking.gap_metrics(gaps) == {"held_out/gap/race/auroc": 0.1, "held_out/gap/sex/sensitivity": 0.05}
    assert tracking.gap_metrics(None) == {} == tracking.gap_metrics([])
