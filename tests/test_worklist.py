"""The nightly worklist's settings and where its line goes in the run's results (fast;
the worklist itself is made and checked against ``forewarn score`` in test_score.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from forewarn.flows.nightly import SiteResult, SitesFailed, raise_if_failed, with_worklists
from forewarn.flows.study import WorklistSettings, demo_study_yaml, parse_study


def test_worklists_are_off_unless_asked_and_the_demo_asks():
    assert WorklistSettings() == WorklistSettings(enabled=False, models=["site", "network"])
    demo = yaml.safe_load(demo_study_yaml({"academic": Path("/d/a.duckdb")}, Path("/d")))
    assert demo["worklist"] == {"enabled": True, "models": ["site", "network", "other_sites"]}


@pytest.mark.parametrize(("models", "message"), [
    (["site", "site"], "worklist.models names a model twice: ['site', 'site']"),
    ([], "List should have at least 1 item"),
    (["clinic"], "worklist.models names ['clinic'], which is neither site, network, other_sites nor a site of the "
                 "study (a)."),
])
def test_bad_worklist_models_are_refused(tmp_path, models, message):
    study = {"name": "s", "tasks": ["t2d_2y"], "sites": [{"name": "a", "source": {"location": "a.duckdb"}}],
             "worklist": {"enabled": True, "models": models}}
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_study(study, base_dir=tmp_path)


def test_worklist_models_may_name_a_site_and_no_site_may_be_named_like_a_kind(tmp_path):
    study = {"name": "s", "tasks": ["t2d_2y"], "sites": [{"name": "a", "source": {"location": "a.duckdb"}},
                                                         {"name": "b", "source": {"location": "b.duckdb"}}],
             "worklist": {"enabled": True, "models": ["site", "b", "network"]}}
    assert parse_study(study, base_dir=tmp_path).worklist.models == ["site", "b", "network"]
    study["sites"][1]["name"] = "other_sites"
    study["worklist"]["models"] = ["site"]
    with pytest.raises(ValueError, match="a site cannot be named site or other_sites: worklist.models gives those"):
        parse_study(study, base_dir=tmp_path)


@pytest.mark.parametrize(("budget", "message"), [
    (0, "worklist.alert_budget: Input should be greater than 0"),
    (1001, "worklist.alert_budget: Input should be less than or equal to 1000"),
])
def test_an_alert_budget_is_per_1000_people(tmp_path, budget, message):
    study = {"name": "s", "tasks": ["t2d_2y"], "sites": [{"name": "a", "source": {"location": "a.duckdb"}}],
             "worklist": {"enabled": True, "alert_budget": budget}}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_study(study, base_dir=tmp_path)


def test_each_worklist_line_goes_on_its_own_result():
    results = [
        SiteResult("academic", "t2d_2y", "published", version="3"),
        SiteResult("academic", "t2d_2y", "validated", model_name="forewarn-t2d_2y-other"),
        SiteResult("community", "t2d_2y", "held", reason="1 to 10 people changed"),
    ]
    notes = {("academic", "t2d_2y"): ("worklist: a.parquet (scored by forewarn-t2d_2y-academic v3)", False),
             ("community", "t2d_2y"): ("worklist: c.parquet (scored by forewarn-t2d_2y-network v1, the network's)", False),
             ("community", "ckd3_2y"): ("worklist failed: no events", True)}
    out = with_worklists(results, notes)
    assert [(r.site, r.task, r.status, r.worklist, r.worklist_failed) for r in out] == [
        ("academic", "t2d_2y", "published", "worklist: a.parquet (scored by forewarn-t2d_2y-academic v3)", False),
        ("academic", "t2d_2y", "validated", "", False),  # a registered model's validation is not the study's result
        ("community", "t2d_2y", "held", "worklist: c.parquet (scored by forewarn-t2d_2y-network v1, the network's)",
         False),
        ("community", "ckd3_2y", "skipped", "worklist failed: no events", True),
    ]
    assert out[3].reason == "no result of the study's tonight"
    # a note without a result of its own and no failure is left to the log
    assert with_worklists([], {("academic", "t2d_2y"): ("no worklist: the site's pull failed tonight", False)}) == []
    assert results[0].worklist == ""  # the input is not changed
    # where the study has no result of its own (a validation-only study), a registered model's validation takes it
    [validated] = with_worklists([results[1]], {("academic", "t2d_2y"): ("worklist: a.parquet", False)})
    assert validated.status == "validated" and validated.worklist == "worklist: a.parquet"
    with pytest.raises(SitesFailed, match=r"^1 of 4 site-task runs failed: community/ckd3_2y: worklist failed: no events$"):
        raise_if_failed(out)


def test_no_champion_is_a_missing_model_or_alias_and_any_other_registry_error_is_raised(tmp_path, restore_tracking,
                                                                                        monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    from forewarn.flows import tracking
    from forewarn.flows.worklist import champion_version

    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    client.create_registered_model("forewarn-t2d_2y-academic")  # no version, no alias
    assert champion_version("forewarn-t2d_2y-academic") is None
    assert champion_version("forewarn-t2d_2y-nowhere") is None
    with mlflow.start_run() as run:
        mlflow.log_param("p", 1)
    client.create_model_version("forewarn-t2d_2y-academic", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.create_model_version("forewarn-t2d_2y-academic", f"runs:/{run.info.run_id}/model", run.info.run_id)
    assert champion_version("forewarn-t2d_2y-academic") is None
    client.set_registered_model_alias("forewarn-t2d_2y-academic", "champion", "2")
    assert champion_version("forewarn-t2d_2y-academic") == "2"

    def refused(self, name):
        raise MlflowException("not allowed", error_code="PERMISSION_DENIED")

    monkeypatch.setattr(mlflow.MlflowClient, "get_registered_model", refused)
    with pytest.raises(MlflowException, match="not allowed"):
        champion_version("forewarn-t2d_2y-academic")


def _tonight(rows):
    import pyarrow as pa

    from forewarn.records import schema

    return pa.table({schema.SUBJECT_ID: pa.array([r[0] for r in rows], pa.int64()),
                     schema.PREDICTION_TIME: pa.array([r[1] for r in rows], pa.timestamp("us")),
                     schema.BOOLEAN_VALUE: pa.nulls(len(rows), pa.bool_()),
                     schema.PREDICTED_BOOLEAN_VALUE: pa.array([r[3] for r in rows], pa.bool_()),
                     schema.PREDICTED_BOOLEAN_PROBABILITY: pa.array([r[2] for r in rows], pa.float64())},
                    schema=schema.PREDICTION_SCHEMA)


def test_the_scoring_record_keeps_each_person_and_time_s_first_night_and_any_later_alert(tmp_path):
    from datetime import date, datetime

    from forewarn.flows.worklist import enter_scored, read_scored

    t1, t2 = datetime(2020, 1, 1), datetime(2020, 6, 1)
    record, problem = read_scored(tmp_path / "none.parquet")  # no record yet
    assert record.num_rows == 0 and problem is None
    record = enter_scored(record, _tonight([(2, t1, 0.2, False), (1, t1, 0.9, True), (4, t1, 0.3, None)]), "m v1",
                          date(2026, 1, 1), 30)
    # night 2: 1 at the same time (its first night kept), 1 at a new visit, 3 new; 2 and 4 alerted
    # now at the same time (a budget's cut moved; 4's first list had no alerts); another model
    record = enter_scored(record, _tonight([(1, t1, 0.5, False), (1, t2, 0.6, True), (3, t1, 0.1, None),
                                            (2, t1, 0.25, True), (4, t1, 0.35, True)]), "m v2", date(2026, 1, 20), 30)
    frame = record.to_pandas()
    assert frame[["subject_id", "predicted_boolean_probability", "model"]].values.tolist() == [
        [1, 0.9, "m v1"], [1, 0.6, "m v2"], [2, 0.2, "m v1"], [3, 0.1, "m v2"], [4, 0.3, "m v1"]]
    assert frame["alerted"].tolist() == [True, True, True, None, True]
    assert [str(d) for d in frame["first_scored_date"]] == ["2026-01-01", "2026-01-20", "2026-01-01", "2026-01-20",
                                                           "2026-01-01"]
    assert [str(d) for d in frame["first_alert_date"]] == ["2026-01-01", "2026-01-20", "2026-01-20", "None",
                                                          "2026-01-20"]
    assert frame["seen_until"].isna().all() and frame["alert_seen_until"].isna().all()
    # 31 days after the first night its scorings are dropped (2 at t1, still listed, enters again as
    # new); a later night's no-alert undoes no alert
    later = enter_scored(record, _tonight([(3, t1, 0.3, False), (1, t2, 0.1, False), (2, t1, 0.4, False)]), "m v3",
                         date(2026, 2, 1), 30)
    assert later.to_pandas()[["subject_id", "model", "alerted"]].values.tolist() == [
        [1, "m v2", True], [2, "m v3", False], [3, "m v2", False]]
    later = later.filter(later.column("subject_id").to_numpy() != 2)
    import pyarrow.parquet as pq

    path = tmp_path / "scored.parquet"
    pq.write_table(later, path)
    assert read_scored(path)[0].equals(later)
    path.write_text("not a record")
    table, problem = read_scored(path)
    assert table.num_rows == 0 and problem.startswith("ArrowInvalid: ")


def test_follow_up_counts_the_alerts_against_what_became_of_each_scoring():
    from datetime import date, datetime

    import pandas as pd

    from forewarn.flows.worklist import enter_scored, follow_up_summary, read_scored

    t, later = datetime(2020, 1, 1), datetime(2020, 7, 1)
    rows = [(1, t, 0.9, True), (2, t, 0.8, True), (3, t, 0.7, False), (4, t, 0.2, False), (5, t, 0.1, False),
            (6, t, 0.6, True), (7, t, 0.5, None), (1, later, 0.95, True)]
    record = enter_scored(read_scored(Path("/nonexistent"))[0], _tonight(rows), "m v1", date(2026, 1, 1), 1095)
    # in the record's order: subject 1 (t, later), 2, 3, 4, 5, 6, 7
    status = ["outcome", "outcome", "no_outcome", "outcome", "no_outcome", "no_outcome", "pending", "window_passed"]
    outcome = [datetime(2020, 12, 1), datetime(2020, 12, 1), None, datetime(2020, 4, 10), None, None, None, None]
    got = follow_up_summary(record, pd.DataFrame({"status": status, "outcome_time": pd.to_datetime(outcome)}),
                            1095, 730)
    assert got["scorings"] == 8 and got["people"] == 7 and got["first_scored_since"] == "2026-01-01"
    assert got["status"] == {"outcome": 3, "no_outcome": 3, "outcome_in_gap": 0, "outcome_before": 0,
                             "window_passed": 1, "died": 0, "pending": 1, "not_in_pull": 0}
    # resolved: risks 0.9, 0.95, 0.8 (outcome, outcome, none), 0.7 (outcome), 0.2, 0.1 (none): 8 of 9 pairs ordered
    resolved = got["resolved"]
    assert {k: resolved[k] for k in ("scorings", "with_outcome", "outcome_rate", "auroc", "mean_risk",
                                     "observed_to_expected")} == {
        "scorings": 6, "with_outcome": 3, "outcome_rate": 0.5, "auroc": pytest.approx(8 / 9),
        "mean_risk": pytest.approx(3.65 / 6), "observed_to_expected": pytest.approx(0.5 * 6 / 3.65)}
    # the risks shown ran high (0.61 against 0.5): the calibration in the large is below 0
    assert resolved["calibration_in_the_large"] < 0 and resolved["calibration_slope"] > 0
    assert got["alerts"] == {"scorings": 6, "true_positive": 2, "false_positive": 1, "false_negative": 1,
                             "true_negative": 2, "sensitivity": 2 / 3, "specificity": 2 / 3, "ppv": 2 / 3}
    # subject 1: earliest alerted scoring with the outcome in its window, 2020-01-01 to 2020-12-01
    assert got["lead_time_days"] == {"people": 1, "median": 335.0, "q1": 335.0, "q3": 335.0, "min": 335, "max": 335}
    assert got["models"] == ["m v1"] and "note" not in got
    from forewarn.flows.worklist import calibration_note, describe

    lines = describe({"rows": 7, "alerts": 3, "threshold": 0.55, "model": "m v1", "published_at": "2026-01-01",
                      "followup": got})
    assert lines[0] == "7 people, 3 alerts at the threshold 0.5500; scored by m v1 (site's), published 2026-01-01"
    assert "  risks shown to them: mean 0.608 against the outcome rate 0.500 (observed/expected 0.822), calibration " \
           "in the large " in "\n".join(lines)
    # judged in words only from 11 resolved with the outcome and 11 without
    assert calibration_note(resolved) == ""
    many = {"scorings": 40, "with_outcome": 11}
    assert calibration_note(many | {"observed_to_expected": 0.79, "calibration_slope": 1.0}) == ": the risks shown ran high"
    assert calibration_note(many | {"observed_to_expected": 1.3, "calibration_slope": 0.7}) == (
        ": the risks shown ran low and were too extreme")
    assert calibration_note(many | {"observed_to_expected": 1.0, "calibration_slope": 1.3}) == ": the risks shown were too moderate"
    assert calibration_note(many | {"observed_to_expected": 1.25, "calibration_slope": 0.8}) == ""
    short = follow_up_summary(record, pd.DataFrame({"status": status, "outcome_time": pd.to_datetime(outcome)}), 365, 730)
    assert "is shorter than the task's horizon (730 days)" in short["note"] and "subgroups" not in short
    # by subgroup: 1 (both rows), 3 and 7 are women; 2, 4, 5 and 6 men; 3 and 4 are 70-79, 7 of unknown age
    groups = pd.DataFrame({"age_band": ["50-59", "50-59", "50-59", "70-79", "70-79", "50-59", "50-59", "~"],
                           "sex": ["F", "F", "M", "F", "M", "M", "M", "F"]})
    by = follow_up_summary(record, pd.DataFrame({"status": status, "outcome_time": pd.to_datetime(outcome)}), 1095,
                           730, groups)["subgroups"]
    assert list(by) == ["age_band", "sex"] and list(by["age_band"]) == ["50-59", "70-79", "~"]
    assert by["sex"] == {
        "F": {"scorings": 4, "alerts": 2, "resolved": 3, "with_outcome": 3, "mean_risk": pytest.approx(2.55 / 3),
              "sensitivity": 2 / 3, "ppv": 1.0},
        "M": {"scorings": 4, "alerts": 2, "resolved": 3, "with_outcome": 0, "mean_risk": pytest.approx(1.1 / 3),
              "sensitivity": None, "ppv": 0.0}}
    assert by["age_band"]["70-79"] == {"scorings": 2, "alerts": 0, "resolved": 2, "with_outcome": 1,
                                       "mean_risk": pytest.approx(0.45), "sensitivity": 0.0, "ppv": None}
    assert by["age_band"]["~"] == {"scorings": 1, "alerts": None, "resolved": 0, "with_outcome": 0,
                                   "mean_risk": None, "sensitivity": None, "ppv": None}


def test_the_sweep_never_removes_a_scoring_record(tmp_path):
    from forewarn.flows.worklist import sweep

    names = ["t2d_2y.parquet", "t2d_2y.json", "t2d_2y.alerted.parquet", "t2d_2y.scored.parquet",
             "t2d_2y.scored.parquet.partial", "t2d_2y.scored.parquet.unreadable-2026-01-01", "notes.txt"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed, stuck = sweep(tmp_path, keep=set())  # worklists off, or no worklist of t2d_2y tonight
    assert removed == {"t2d_2y"} and stuck == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "t2d_2y.scored.parquet",
                                                          "t2d_2y.scored.parquet.unreadable-2026-01-01"]


def test_a_scoring_alerted_on_a_later_night_is_judged_from_that_night(tmp_path):
    """Scored on night 1 (records to T) without an alert, alerted on night 2 (records to
    T + 200): an outcome dated T + 150 came before the alert; one at T + 300 is a hit with
    100 days of lead. A third person, alerted on night 1, has the outcome at T + 300: 300
    days."""
    from datetime import date, datetime, timedelta

    from helpers import write_events

    from forewarn.features.labels import load_task
    from forewarn.flows.worklist import follow_up, read_scored
    from forewarn.records import schema

    T, D = datetime(2020, 1, 1), timedelta(days=1)
    spec = load_task("t2d_2y")  # gap 90, horizon 730 days

    def pull(name, until, outcomes=()):
        rows = []
        for s in (1, 2, 3):
            rows += [(s, datetime(2015, 1, 1), schema.OBSERVATION_START, None), (s, T, "Visit//OP", None),
                     (s, until, schema.OBSERVATION_END, None)]
        rows += [(s, when, "ICD10CM//E11.9", None) for s, when in outcomes]
        write_events(tmp_path / name, rows)
        return tmp_path / name

    path = tmp_path / "t2d_2y.scored.parquet"
    night1 = _tonight([(1, T, 0.3, False), (2, T, 0.3, False), (3, T, 0.9, True)])
    follow_up(path, night1, "m v1", spec, pull("n1", T), date(2026, 1, 1), 1095)
    night2 = _tonight([(1, T, 0.6, True), (2, T, 0.6, True), (3, T, 0.9, True)])
    follow_up(path, night2, "m v1", spec, pull("n2", T + 200 * D), date(2026, 1, 2), 1095)
    got = follow_up(path, night2, "m v1", spec, pull("n3", T + 900 * D, [(1, T + 150 * D), (2, T + 300 * D),
                                                                          (3, T + 300 * D)]), date(2026, 1, 3), 1095)
    assert got["status"]["outcome_before"] == 1 and got["status"]["outcome"] == 2
    assert got["alerts"] == {"scorings": 2, "true_positive": 2, "false_positive": 0, "false_negative": 0,
                             "true_negative": 0, "sensitivity": 1.0, "specificity": None, "ppv": 1.0}
    assert got["lead_time_days"] == {"people": 2, "median": 200.0, "q1": 150.0, "q3": 250.0, "min": 100, "max": 300}
    record = read_scored(path)[0].to_pandas()
    assert record["seen_until"].tolist() == [T, T, T]  # the first night's
    assert record["alert_seen_until"].tolist() == [T + 200 * D, T + 200 * D, T]
    assert [str(d) for d in record["first_alert_date"]] == ["2026-01-02", "2026-01-02", "2026-01-01"]


@pytest.mark.parametrize(("alerts", "rows", "set_for", "expected"), [
    (50, 1000, 0.05, {"rows": 0.05, "set_for": 0.05, "ratio": 1.0, "far": False}),
    (100, 1000, 0.05, {"rows": 0.1, "set_for": 0.05, "ratio": 2.0, "far": True}),  # twice: far
    (99, 1000, 0.05, {"rows": 0.099, "set_for": 0.05, "ratio": 1.98, "far": False}),
    (25, 1000, 0.05, {"rows": 0.025, "set_for": 0.05, "ratio": 0.5, "far": True}),  # half: far
    (5, 1000, None, None),  # a threshold without its budget (a run from before it was kept)
    (0, 0, 0.05, None),
])
def test_the_alert_rate_is_far_off_at_twice_or_half_the_rate_the_threshold_was_set_for(alerts, rows, set_for,
                                                                                      expected):
    from forewarn.flows.score import alert_rate

    got = alert_rate(alerts, rows, set_for)
    assert got == (None if expected is None else {**expected, "ratio": pytest.approx(expected["ratio"]),
                                                  "rows": pytest.approx(expected["rows"])})


def test_a_far_alert_rate_is_said_at_the_site_and_only_its_direction_leaves():
    from forewarn.flows.worklist import describe, rate_note

    summary = {"rows": 8683, "alerts": 2408, "alerts_by": "threshold", "threshold": 0.2541, "new_alerts": None,
               "model": "forewarn-t2d_2y-community v1", "whose": "site", "published_at": "2026-12-05T14:47:20+00:00",
               "alert_rate": {"rows": 2408 / 8683, "set_for": 0.05, "ratio": 2408 / 8683 / 0.05, "far": True}}
    assert rate_note(summary) == ("; its threshold alerts far more of these people than it was set to (see the .json)")
    assert describe(summary) == [
        "8,683 people, 2,408 alerts at the threshold 0.2541; scored by forewarn-t2d_2y-community v1 (site's), published "
        "2026-12-05T14:47:20+00:00",
        "the threshold alerts 27.7% of the list, against the 5.0% of its tuning rows it was set to alert: the list's "
        "people are unlike those it was set on, so the report's sensitivity and PPV do not hold here "
        "(worklist.alert_budget sets the number of alerts; the follow-up's calibration, once scorings resolve, says "
        "whether the risks themselves do)"]
    fewer = summary | {"alert_rate": {"rows": 0.01, "set_for": 0.05, "ratio": 0.2, "far": True}}
    assert "far fewer" in rate_note(fewer)
    assert rate_note(summary | {"alert_rate": {"rows": 0.06, "set_for": 0.05, "ratio": 1.2, "far": False}}) == ""
    assert rate_note(summary | {"alert_rate": None}) == ""


def test_another_site_s_champion_says_whose_calibration_its_risks_carry():
    """The worklist note of another site's champion: recalibrated here (a calibrator its
    external validation fitted on this site's tuning split), kept as shipped (no refit
    there beat its own calibrator), or as calibrated at its site (no recalibration)."""
    from forewarn.flows.worklist import risks_text

    sigmoid = {"method": "sigmoid", "a": 0.1, "b": 1.2, "run_id": "r1"}
    assert risks_text(sigmoid, "academic", True) == "its risks recalibrated here (sigmoid, on this site's tuning split)"
    assert risks_text({"method": "shipped", "run_id": "r1"}, "academic", True) == (
        "its risks as calibrated at academic (its validation here kept them: no calibrator fitted on this site's "
        "tuning split beat them)")
    assert risks_text(None, "academic", True) == (
        "its risks as calibrated at academic (its validation here could not recalibrate: fewer than 11 tuning events "
        "or non-events)")
    assert risks_text(None, "academic", False) == "its risks as calibrated at academic"
