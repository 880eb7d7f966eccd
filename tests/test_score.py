"""Scoring people at the site with a registered model (``forewarn score``).

One night of the flow registers academic's T2D model; scoring the night's held-out
prediction times from its pull with ``forewarn-t2d_2y-academic`` (its champion) must give
the very risks the flow's evaluation scored them with, and alert exactly where they reach
the threshold the model was published with. The night also writes the site's worklist
(``worklist.enabled``): every eligible person scored by the champion, highest risk first,
which must be exactly what ``forewarn score --eligible --by-risk`` gives.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import flow_workdir
from typer.testing import CliRunner

pytestmark = pytest.mark.slow

MODEL = "forewarn-t2d_2y-academic"


def _study(demo_network) -> dict:
    return {
        "name": "scoring", "demo": True, "tasks": ["t2d_2y"],
        "sites": [{"name": "academic", "source": {"location": str(demo_network["academic"])}}],
        "features": {"windows": ["365d", "full"]},  # not the default: the model's own settings must be used
        "evaluation": {"bootstrap": 20, "shap_rows": 100},
        "models": {"n_jobs": 1, "search": {"trials": 0}},
        "validation": {"designs": ["internal"]},
        "worklist": {"enabled": True},
        # scoring, not calibration, is under test: the first model of this small network is champion
        "promotion": {"slope_low": 0.2, "slope_high": 5.0},
    }


@pytest.fixture(scope="module")
def night(tmp_path_factory, demo_network, prefect_server):
    work = tmp_path_factory.mktemp("work")
    with flow_workdir(work, tmp_path_factory.mktemp("prefect-home")):
        from forewarn.flows.nightly import nightly
        from forewarn.flows.study import parse_study

        study = parse_study(_study(demo_network), base_dir=work)
        results = nightly(study)
    stages = work / "sites" / "academic" / "work" / "stages"
    predictions = pd.read_parquet(next(stages.glob("train-t2d_2y/*/predictions/xgboost.parquet")))
    held = predictions[predictions["split"] == "held_out"].reset_index(drop=True)
    times = work / "times.parquet"
    held[["subject_id", "prediction_time", "boolean_value"]].to_parquet(times)
    return {"work": work, "events": next(stages.glob("pull/*/pull/events")), "held": held, "times": times,
            "uri": f"sqlite:///{work / 'mlruns' / 'mlflow.db'}", "study": study, "results": results}


def _score(night, args: list[str]):
    from forewarn.flows.cli import app

    return CliRunner().invoke(app, ["score", *args, "--tracking-uri", night["uri"]])


def test_scores_are_the_risks_the_flow_evaluated_the_held_out_rows_with(night, tmp_path, restore_tracking):
    from forewarn.flows import tracking
    from forewarn.records import schema

    out = tmp_path / "scored.parquet"
    result = _score(night, [MODEL, str(night["events"]), "--times", str(night["times"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.schema.equals(schema.PREDICTION_SCHEMA)
    scored = table.to_pandas()
    both = night["held"].merge(scored, on=["subject_id", "prediction_time"], suffixes=("_flow", ""), validate="1:1")
    assert len(both) == len(scored) == len(night["held"]) > 0
    # the same columns, made with the model's own windows (365d, full), and the same model: the same risks
    assert (both["predicted_boolean_probability"] == both["predicted_boolean_probability_flow"]).all()
    assert (both["boolean_value"] == both["boolean_value_flow"]).all()
    model = tracking.registered_model(MODEL)
    threshold = tracking.registered_threshold(model.run_id, tmp_path / "run")
    assert threshold is not None
    alerts = scored["predicted_boolean_probability"] >= threshold
    assert (scored["predicted_boolean_value"] == alerts).all()
    assert "these events are" not in result.output  # academic's model on academic's events
    lines = result.output.strip().splitlines()
    assert lines[-2].startswith(f"scored {len(scored):,} prediction times of {scored['subject_id'].nunique():,} "
                                f"subjects with {MODEL} v1 (t2d_2y, trained at academic) in ")
    assert lines[-1] == (f"  {int(alerts.sum()):,} at or above the alert threshold {threshold:.4f} the model was "
                         "published with (predicted_boolean_value)")


def test_a_calibrator_given_replaces_the_models_own(night, tmp_path, restore_tracking):
    """``calibrator`` (a site's own, from the model's external validation there) is applied
    to the model's uncalibrated risk in place of its own calibrator."""
    from forewarn.flows import tracking
    from forewarn.flows.score import read_times, score
    from forewarn.models.calibration import Calibrator

    tracking.configure(night["uri"])
    times = read_times(night["times"])
    risks = {}
    for name, calibrator in (("own", None), ("raw", Calibrator("none")), ("site", Calibrator("sigmoid", a=-0.5, b=1.3))):
        score(MODEL, night["events"], times, tmp_path / f"{name}.parquet", calibrator=calibrator)
        risks[name] = pd.read_parquet(tmp_path / f"{name}.parquet")["predicted_boolean_probability"].to_numpy()
    # the model's own calibrator (the one its training chose, perhaps none) gave its own risks
    stage = next((night["work"] / "sites" / "academic" / "work" / "stages").glob("train-t2d_2y/*"))
    own = Calibrator.from_json(json.loads((stage / "calibration.json").read_text()))
    np.testing.assert_allclose(risks["own"], own(risks["raw"]), rtol=1e-6)
    np.testing.assert_allclose(risks["site"], Calibrator("sigmoid", a=-0.5, b=1.3)(risks["raw"]), rtol=1e-6)


def test_times_without_outcomes_and_ids_the_pull_lacks(night, tmp_path, restore_tracking):
    times = night["held"][["subject_id", "prediction_time"]].head(5).copy()
    times.loc[len(times)] = [12345, times["prediction_time"].iloc[0]]  # no such person in the pull
    path = tmp_path / "times.parquet"
    times.to_parquet(path)
    out = tmp_path / "scored.parquet"
    result = _score(night, [f"{MODEL}/1", str(night["events"]), "--times", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    scored = pd.read_parquet(out)
    assert len(scored) == 6 and scored["boolean_value"].isna().all()
    assert np.isfinite(scored["predicted_boolean_probability"]).all()
    assert (f"  1 of the subjects have no events in {night['events']}: their risk rests on nothing; check that the ids "
            "are this pull's de-identified ones") in result.output


@pytest.mark.parametrize(("case", "message"), [
    ("no file", "no such file; pass a parquet file of subject_id and prediction_time"),
    ("no column", "missing column(s) ['prediction_time']; the file needs subject_id and prediction_time (it has "
                  "['subject_id'])"),
    ("no model", "the registry ("),
    ("no events", "holds no MEDS event shards (*.parquet); pass the events folder of a pull"),
])
def test_bad_input_is_named(night, tmp_path, restore_tracking, case, message):
    times = tmp_path / "times.parquet"
    if case == "no column":
        pd.DataFrame({"subject_id": [1, 2]}).to_parquet(times)
    elif case != "no file":
        times = night["times"]
    model = "forewarn-t2d_2y-nowhere" if case == "no model" else MODEL
    events = tmp_path if case == "no events" else night["events"]
    result = _score(night, [model, str(events), "--times", str(times), "--out", str(tmp_path / "out.parquet")])
    assert result.exit_code == 2
    assert message in result.output
    if case == "no file":
        assert str(times) in result.output
    assert not (tmp_path / "out.parquet").exists()


def test_the_output_stays_whole_when_scoring_fails(night, tmp_path, restore_tracking):
    out = tmp_path / "scored.parquet"
    out.write_bytes(b"yesterday's")
    result = _score(night, ["forewarn-t2d_2y-nowhere", str(night["events"]), "--times", str(night["times"]),
                            "--out", str(out)])
    assert result.exit_code == 2 and out.read_bytes() == b"yesterday's"
    assert Path(str(out) + ".partial").exists() is False


def _reference(night) -> pd.DataFrame:
    return night["held"].set_index(["subject_id", "prediction_time"])["predicted_boolean_probability"]


def test_rows_keep_the_files_order_and_repeats(night, tmp_path, restore_tracking):
    times = night["held"][["subject_id", "prediction_time"]].sample(frac=1, random_state=3).reset_index(drop=True)
    times = pd.concat([times, times.iloc[[0]]], ignore_index=True)  # a repeated row
    path, out = tmp_path / "times.parquet", tmp_path / "scored.parquet"
    times.to_parquet(path)
    result = _score(night, [MODEL, str(night["events"]), "--times", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    scored = pd.read_parquet(out)
    assert scored[["subject_id", "prediction_time"]].equals(times)
    expected = _reference(night).loc[list(zip(times["subject_id"], times["prediction_time"], strict=True))].to_numpy()
    assert (scored["predicted_boolean_probability"].to_numpy() == expected).all()
    assert "  1 of the rows repeat an earlier row's subject and time (every row is kept, in its place)" in result.output


def test_times_in_utc_are_the_pulls_and_other_zones_are_refused(night, tmp_path, restore_tracking):
    times = night["held"][["subject_id", "prediction_time"]].head(20).copy()
    utc, zoned = tmp_path / "utc.parquet", tmp_path / "zoned.parquet"
    times.assign(prediction_time=times["prediction_time"].dt.tz_localize("UTC")).to_parquet(utc)
    times.assign(prediction_time=times["prediction_time"].dt.tz_localize("America/New_York")).to_parquet(zoned)
    out = tmp_path / "scored.parquet"
    assert _score(night, [MODEL, str(night["events"]), "--times", str(utc), "--out", str(out)]).exit_code == 0
    scored = pd.read_parquet(out)
    assert (scored["predicted_boolean_probability"].to_numpy() == _reference(night).loc[
        list(zip(times["subject_id"], times["prediction_time"], strict=True))].to_numpy()).all()
    result = _score(night, [MODEL, str(night["events"]), "--times", str(zoned), "--out", str(tmp_path / "z.parquet")])
    assert result.exit_code == 2
    assert "prediction_time is in time zone America/New_York; give the pull's times (naive" in result.output


@pytest.mark.parametrize(("times", "message"), [
    (pd.DataFrame({"subject_id": ["MRN0012345"], "prediction_time": [pd.Timestamp("2020-01-01")]}),
     "string) is not the pull's de-identified subject ids (integers): score ids from the pull's events"),
    (pd.DataFrame({"subject_id": [1], "prediction_time": [pd.Timestamp(1609344000000000001)]}),
     "column prediction_time (timestamp[ns]) is not timestamps to the microsecond: round finer times"),
    (pd.DataFrame({"subject_id": [1, None], "prediction_time": [pd.Timestamp("2020-01-01")] * 2}),
     "column subject_id has 1 null value(s); every row needs a subject_id and a prediction_time"),
])
def test_a_bad_value_is_named_by_column_never_shown(night, tmp_path, restore_tracking, times, message):
    path = tmp_path / "times.parquet"
    times.to_parquet(path)
    result = _score(night, [MODEL, str(night["events"]), "--times", str(path), "--out", str(tmp_path / "o.parquet")])
    assert result.exit_code == 2 and message in result.output
    assert "MRN0012345" not in result.output and "1609344000000000001" not in result.output


def test_events_of_one_subject_in_two_shards_are_refused(night, tmp_path, restore_tracking):
    events = pq.read_table(next(night["events"].glob("*.parquet")))
    split = tmp_path / "events"
    split.mkdir()
    pq.write_table(events.slice(0, events.num_rows // 2 + 1), split / "0.parquet")  # a subject across the cut
    pq.write_table(events.slice(events.num_rows // 2), split / "1.parquet")
    result = _score(night, [MODEL, str(split), "--times", str(night["times"]), "--out", str(tmp_path / "o.parquet")])
    assert result.exit_code == 2
    assert "subject(s) have events in more than one shard (0.parquet, 1.parquet); MEDS keeps each subject" in result.output


def test_an_output_folder_and_a_missing_codes_file_are_refused(night, tmp_path, restore_tracking):
    args = [MODEL, str(night["events"]), "--times", str(night["times"])]
    result = _score(night, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2 and f"--out {tmp_path} is a folder; name the predictions file" in result.output
    result = _score(night, [*args, "--out", str(tmp_path / "o.parquet"), "--codes", str(tmp_path / "codes.parquet")])
    assert result.exit_code == 2 and "codes.parquet: no such codes file" in result.output


def test_the_models_task_scores_each_eligible_person_at_their_latest_time(night, tmp_path, restore_tracking):
    from forewarn.features.labels import latest_eligible_times, load_task

    out = tmp_path / "worklist.parquet"
    result = _score(night, [MODEL, str(night["events"]), "--task", "t2d_2y", "--out", str(out)])
    assert result.exit_code == 0, result.output
    expected, counts = latest_eligible_times(night["events"], load_task("t2d_2y"))
    scored = pd.read_parquet(out)
    assert scored[["subject_id", "prediction_time"]].equals(expected.select(["subject_id", "prediction_time"]).to_pandas())
    assert scored["boolean_value"].isna().all() and len(scored) == counts["eligible"] > 0
    assert (f"{counts['candidates']:,} subjects with a candidate prediction time; left out: outcome recorded "
            f"{counts['outcome_recorded']:,}, died {counts['died']:,}, age (or no birth recorded) {counts['age']:,}, "
            f"prior observation {counts['prior_observation']:,}; each of the {counts['eligible']:,} others at their "
            "latest") in result.output
    assert counts["outcome_recorded"] > 0 and counts["died"] > 0
    # the task the model's run recorded is the same definition: --eligible scores the same
    recorded = tmp_path / "recorded.parquet"
    result = _score(night, [MODEL, str(night["events"]), "--eligible", "--out", str(recorded)])
    assert result.exit_code == 0, result.output
    assert pd.read_parquet(recorded).equals(scored)
    # the same times given as a file score the same
    times = tmp_path / "times.parquet"
    scored[["subject_id", "prediction_time"]].to_parquet(times)
    again = tmp_path / "again.parquet"
    assert _score(night, [MODEL, str(night["events"]), "--times", str(times), "--out", str(again)]).exit_code == 0
    assert pd.read_parquet(again)["predicted_boolean_probability"].equals(scored["predicted_boolean_probability"])


def test_another_task_definition_or_no_times_are_refused(night, tmp_path, restore_tracking):
    import yaml

    from forewarn.features.labels import load_task

    other = load_task("t2d_2y").model_dump(mode="json") | {"horizon_days": 365}
    path = tmp_path / "t2d_1y.yaml"
    path.write_text(yaml.safe_dump(other))
    out = str(tmp_path / "o.parquet")
    result = _score(night, [MODEL, str(night["events"]), "--task", str(path), "--out", out])
    assert result.exit_code == 2
    assert f"is not the definition {MODEL} v1 was trained for (t2d_2y, digest " in result.output
    result = _score(night, [MODEL, str(night["events"]), "--out", out])
    assert result.exit_code == 2 and "give one of --times" in result.output
    result = _score(night, [MODEL, str(night["events"]), "--out", out, "--task", "t2d_2y", "--times", str(night["times"])])
    assert result.exit_code == 2 and "give one of --times" in result.output
    result = _score(night, [MODEL, str(night["events"]), "--out", out, "--task", "t2d_2y", "--eligible"])
    assert result.exit_code == 2 and "give one of --times" in result.output


def test_by_risk_puts_the_highest_risk_first_with_each_row_s_outcome(night, tmp_path, restore_tracking):
    times = night["held"][["subject_id", "prediction_time", "boolean_value"]].sample(frac=1, random_state=5)
    times = pd.concat([times, times.iloc[[0]]], ignore_index=True)  # a repeated row
    path, out = tmp_path / "times.parquet", tmp_path / "scored.parquet"
    times.to_parquet(path)
    result = _score(night, [MODEL, str(night["events"]), "--times", str(path), "--out", str(out), "--by-risk"])
    assert result.exit_code == 0, result.output
    scored = pd.read_parquet(out)
    flow = night["held"].sort_values(["predicted_boolean_probability", "subject_id", "prediction_time"],
                                     ascending=[False, True, True], ignore_index=True)
    repeated = flow.index[(flow["subject_id"] == times["subject_id"].iloc[0])
                          & (flow["prediction_time"] == times["prediction_time"].iloc[0])][0]
    expected = pd.concat([flow.iloc[:repeated + 1], flow.iloc[repeated:]], ignore_index=True)  # side by side
    for column in ("subject_id", "prediction_time", "boolean_value", "predicted_boolean_probability"):
        assert scored[column].equals(expected[column]), column
    assert "  1 of the rows repeat an earlier row's subject and time (every row is kept)" in result.output


def test_an_alert_budget_alerts_the_highest_risks(night, tmp_path, restore_tracking):
    import math

    out = tmp_path / "budget.parquet"
    args = [MODEL, str(night["events"]), "--times", str(night["times"]), "--out", str(out)]
    result = _score(night, [*args, "--alert-budget", "25"])
    assert result.exit_code == 0, result.output
    scored = pd.read_parquet(out)
    k = math.ceil(25 * len(scored) / 1000)
    # exactly the k first in risk order, ties at the cut by subject and time
    ranked = scored.sort_values(["predicted_boolean_probability", "subject_id", "prediction_time"],
                                ascending=[False, True, True], kind="stable")
    assert scored["predicted_boolean_value"].sum() == k
    assert ranked["predicted_boolean_value"].iloc[:k].all() and not ranked["predicted_boolean_value"].iloc[k:].any()
    cut = ranked["predicted_boolean_probability"].iloc[k - 1]
    assert (f"  {k} alerts at the budget of 25 per 1,000: the highest risks, down to {cut:.4f} (ties at the cut by "
            "subject and time" in result.output)
    # ten rows of one risk, and a budget that cuts among them: exactly half alert
    tied = tmp_path / "tied.parquet"
    pd.concat([night["held"][["subject_id", "prediction_time"]].head(1)] * 10, ignore_index=True).to_parquet(tied)
    result = _score(night, [MODEL, str(night["events"]), "--times", str(tied), "--out", str(out), "--alert-budget", "500"])
    assert result.exit_code == 0, result.output
    assert pd.read_parquet(out)["predicted_boolean_value"].tolist() == [True] * 5 + [False] * 5
    assert (scored["subject_id"].to_numpy() == night["held"]["subject_id"].to_numpy()).all()  # the file's order still
    result = _score(night, [*args, "--alert-budget", "0"])
    assert result.exit_code == 2
    assert "the alert budget is alerts per 1,000 rows, above 0 and at most 1,000; got 0.0" in result.output


def _worklists(night) -> Path:
    return night["work"] / "sites" / "academic" / "work" / "worklists" / "scoring"


def test_the_nightly_worklist_is_every_eligible_person_highest_risk_first(night, tmp_path, restore_tracking):
    import json

    from forewarn.records import schema

    folder = _worklists(night)
    assert sorted(p.name for p in folder.iterdir()) == ["t2d_2y.alerted.parquet", "t2d_2y.json", "t2d_2y.new.parquet",
                                                        "t2d_2y.parquet", "t2d_2y.scored.parquet"]
    worklist = pq.read_table(folder / "t2d_2y.parquet")
    assert worklist.schema.equals(schema.PREDICTION_SCHEMA)
    # the people --eligible scores (in subject order), sorted by risk, ties by subject and time
    plain = tmp_path / "plain.parquet"
    result = _score(night, [MODEL, str(night["events"]), "--eligible", "--out", str(plain)])
    assert result.exit_code == 0, result.output
    expected = (pd.read_parquet(plain)
                .sort_values(["predicted_boolean_probability", "subject_id", "prediction_time"],
                             ascending=[False, True, True], kind="stable", ignore_index=True))
    frame = worklist.to_pandas()
    pd.testing.assert_frame_equal(frame, expected)
    assert frame["predicted_boolean_probability"].is_monotonic_decreasing
    assert len(frame) == frame["subject_id"].nunique() > 0 and frame["boolean_value"].isna().all()
    summary = json.loads((folder / "t2d_2y.json").read_text())
    assert summary["model"] == f"{MODEL} v1" and summary["trained_at"] == "academic" and summary["task"] == "t2d_2y"
    assert summary["rows"] == summary["eligibility"]["eligible"] == len(frame)
    assert summary["alerts"] == int(frame["predicted_boolean_value"].sum()) > 0
    assert summary["scored_at"] <= summary["published_at"]
    # the threshold's alert rate on the list against the share of tuning rows it was set to alert
    [evaluated] = (night["work"] / "sites" / "academic" / "work" / "stages").glob("evaluate-t2d_2y/*/metrics.json")
    point = json.loads(evaluated.read_text())["subgroup_threshold"]
    assert point["threshold"] == summary["threshold"] and point["alert_budget"] in (0.01, 0.05, 0.1)
    ratio = summary["alerts"] / summary["rows"] / point["alert_budget"]
    assert summary["alert_rate"] == {"rows": pytest.approx(summary["alerts"] / summary["rows"]),
                                     "set_for": point["alert_budget"], "ratio": pytest.approx(ratio),
                                     "far": ratio >= 2 or ratio <= 0.5}
    # the first worklist: every alert is new, and the site's alert record holds each of them
    alerts = int(frame["predicted_boolean_value"].sum())
    assert summary["new_alerts"] == {"lookback_days": 30, "new": alerts, "repeated": 0}
    record = pd.read_parquet(folder / "t2d_2y.alerted.parquet")
    assert sorted(record["subject_id"]) == sorted(frame.loc[frame["predicted_boolean_value"], "subject_id"])
    assert record["previous_alert_date"].isna().all()
    new = pq.read_table(folder / "t2d_2y.new.parquet")
    assert new.schema.equals(schema.PREDICTION_SCHEMA)
    pd.testing.assert_frame_equal(new.to_pandas(), frame[frame["predicted_boolean_value"]].reset_index(drop=True))
    # every scoring enters the site's record for follow-up, seen until the subject's last event tonight
    scored = pd.read_parquet(folder / "t2d_2y.scored.parquet")
    pd.testing.assert_frame_equal(
        scored[["subject_id", "prediction_time", "predicted_boolean_probability", "alerted"]],
        frame.sort_values(["subject_id", "prediction_time"], ignore_index=True)[
            ["subject_id", "prediction_time", "predicted_boolean_probability", "predicted_boolean_value"]]
        .rename(columns={"predicted_boolean_value": "alerted"}))
    assert (scored["model"] == f"{MODEL} v1").all()
    last = _last_events(night["events"])
    assert (scored["seen_until"] == scored["subject_id"].map(last)).all()
    # no one eligible has the outcome recorded; for those whose record already runs two years (the
    # horizon) past their latest visit the window had closed when shown; the others are open
    seen = _seen_past_horizon(night["events"], frame)
    followup = summary["followup"]
    assert followup["scorings"] == len(frame) and followup["kept_days"] == 1095 and 0 < seen.sum() < len(frame)
    assert followup["status"] == {"outcome": 0, "no_outcome": 0, "outcome_in_gap": 0, "outcome_before": 0,
                                  "window_passed": int(seen.sum()), "died": 0, "pending": int((~seen).sum()),
                                  "not_in_pull": 0}
    assert followup["resolved"] == {"scorings": 0, "with_outcome": 0, "outcome_rate": None, "auroc": None,
                                    "mean_risk": None, "observed_to_expected": None, "calibration_in_the_large": None,
                                    "calibration_slope": None}
    assert followup["alerts"] is None and followup["lead_time_days"] is None
    # the run's summary names the file and the model, never a count
    [published] = night["results"]
    assert published.status == "published" and not published.worklist_failed
    from forewarn.flows.worklist import rate_note

    # with "far" when its threshold alerts twice or half the share it was set for (tested in test_worklist.py)
    assert published.worklist == f"worklist: {folder / 't2d_2y.parquet'} (scored by {MODEL} v1{rate_note(summary)})"


def _cached(night, name: str):
    """The night's stage ``name`` at academic, as the flow left it (never computed here)."""
    from forewarn.flows.cache import StageCache

    cache = StageCache(night["work"] / "sites" / "academic" / "work" / "stages", site="academic")
    [key] = [p.name for p in (cache.root / name).iterdir()]
    return cache.run(name, key, lambda out: pytest.fail(f"the {name} stage is cached"))


def _cached_worklist(night):
    return _cached(night, "worklist-t2d_2y")


def _last_events(events: Path) -> pd.Series:
    """Each subject's last event time in a pull."""
    from forewarn.records import schema

    return (pd.concat([pd.read_parquet(p, columns=[schema.SUBJECT_ID, schema.TIME]) for p in events.glob("*.parquet")])
            .groupby(schema.SUBJECT_ID)[schema.TIME].max())


def _seen_past_horizon(events: Path, frame: pd.DataFrame) -> np.ndarray:
    """Whether each row's subject has an event 730 days or more after its prediction time."""
    last = frame["subject_id"].map(_last_events(events))
    return (last >= frame["prediction_time"] + pd.Timedelta(days=730)).to_numpy()


def test_the_worklist_takes_the_first_preferred_champion(night, restore_tracking):
    from forewarn.features.labels import load_task
    from forewarn.flows import tracking
    from forewarn.flows.study import WorklistSettings
    from forewarn.flows.worklist import worklist_model

    tracking.configure(night["uri"])
    spec = load_task("t2d_2y")
    academic = night["study"].sites[0]
    sites = [academic.model_copy(update={"name": "community"}), academic]

    def prefer(*models, site="academic", task=spec):
        study = night["study"].model_copy(update={"sites": sites,
                                                  "worklist": WorklistSettings(enabled=True, models=list(models))})
        choice = worklist_model(study, task, site)
        return None if choice.model is None else choice.model.label, choice.whose, list(choice.passed)

    assert prefer("site", "network") == (f"{MODEL} v1", "site", [])
    assert prefer("network", "site") == (f"{MODEL} v1", "site", ["forewarn-t2d_2y-network has no champion"])
    assert prefer("network") == (None, "", ["forewarn-t2d_2y-network has no champion"])
    assert prefer("site", "network", site="community") == (
        None, "", ["forewarn-t2d_2y-community has no champion", "forewarn-t2d_2y-network has no champion"])
    # another site's champion only where it was validated (the study has no external design: it was not)
    assert prefer("site", "other_sites", site="community") == (
        None, "", ["forewarn-t2d_2y-community has no champion", f"{MODEL} v1 has not been validated at community"])
    assert prefer("other_sites") == (None, "", ["forewarn-t2d_2y-community has no champion"])  # not the site itself
    # a champion of another definition of the task (a study that changed it, or another study's) scores no worklist
    other = spec.model_copy(update={"horizon_days": 365})
    assert prefer("site", task=other) == (None, "", [f"{MODEL} v1 was trained for another definition of t2d_2y"])


def _pull(night):
    return _cached(night, "pull")


def _elsewhere(night, tmp_path, **worklist):
    """The night's study with academic's worklists in ``tmp_path`` (an earlier night's
    there: T2D and CKD) and a second site, community, whose pull failed tonight."""
    from forewarn.flows.study import WorklistSettings

    study = night["study"]
    site = study.sites[0].model_copy(update={"workdir": tmp_path / "site"})
    folder = tmp_path / "site" / "worklists" / "scoring"
    folder.mkdir(parents=True)
    for name in ("t2d_2y.parquet", "t2d_2y.json", "ckd3_2y.parquet", "ckd3_2y.json"):
        (folder / name).write_text("an earlier night's")
    (folder / "notes.txt").write_text("not Forewarn's")  # left alone, as is another study's folder
    (tmp_path / "site" / "worklists" / "other-study").mkdir()
    (tmp_path / "site" / "worklists" / "other-study" / "t2d_2y.parquet").write_text("another study's")
    other = site.model_copy(update={"name": "community", "workdir": tmp_path / "community"})
    (tmp_path / "community" / "worklists" / "scoring").mkdir(parents=True)
    (tmp_path / "community" / "worklists" / "scoring" / "t2d_2y.parquet").write_text("an earlier night's")
    return study.model_copy(update={"sites": [site, other],
                                    "worklist": WorklistSettings(**({"enabled": True} | worklist))}), folder


def _run_worklists(study, pull, tmp_path, pulls=None):
    import logging

    from forewarn.features.labels import load_task
    from forewarn.flows.cache import StageCache
    from forewarn.flows.worklist import worklists

    pulls = {"academic": pull} if pulls is None else pulls
    return worklists(study, [load_task("t2d_2y"), load_task("ckd3_2y")], pulls,
                     {name: StageCache(tmp_path / "stages" / name, site=name) for name in pulls},
                     {name: [] for name in pulls}, logging.getLogger("test"))


def test_a_worklist_that_cannot_be_made_fails_the_night_and_only_its_kind_leaves(night, tmp_path, restore_tracking,
                                                                                 caplog):
    import json
    import logging
    from dataclasses import replace

    from forewarn.flows import tracking
    from forewarn.flows.artifact import summary_markdown
    from forewarn.flows.nightly import SitesFailed, raise_if_failed, with_worklists

    tracking.configure(night["uri"])
    pull = _pull(night)
    events = pq.read_table(next(pull.result.events_dir.glob("*.parquet")))
    split = tmp_path / "events"
    split.mkdir()
    pq.write_table(events.slice(0, events.num_rows // 2 + 1), split / "0.parquet")  # a subject across the cut
    pq.write_table(events.slice(events.num_rows // 2), split / "1.parquet")
    broken = replace(pull, result=replace(pull.result, events_dir=split), digest="another pull")
    study, folder = _elsewhere(night, tmp_path)
    with caplog.at_level(logging.INFO, logger="test"):
        notes = _run_worklists(study, broken, tmp_path)
    error = folder / "t2d_2y.error.json"
    assert notes == {
        ("academic", "t2d_2y"): (f"worklist failed (ValueError); the reason is in {error} at the site; the earlier "
                                 "night's worklist was removed", True),
        # the next task goes on
        ("academic", "ckd3_2y"): ("no worklist: forewarn-ckd3_2y-academic has no champion; forewarn-ckd3_2y-network "
                                  "has no champion; the earlier night's worklist was removed", False),
        ("community", "t2d_2y"): ("no worklist: the site's pull failed tonight; the earlier night's worklist was "
                                  "removed", False),
        ("community", "ckd3_2y"): ("no worklist: the site's pull failed tonight", False),
    }
    # the reason, which counts the site's people, stays at the site; nothing else of an earlier night is left
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "t2d_2y.error.json"]
    assert (tmp_path / "site" / "worklists" / "other-study" / "t2d_2y.parquet").read_text() == "another study's"
    recorded = json.loads(error.read_text())
    assert recorded["error"] == "ValueError" and "subject(s) have events in more than one shard" in recorded["reason"]
    assert list((tmp_path / "community" / "worklists" / "scoring").iterdir()) == []
    # the logs say what the summary says, and no more
    logged = [r.getMessage() for r in caplog.records if r.name == "test"]
    assert sorted(logged) == sorted(f"site {s}, task {t}: {note}" for (s, t), (note, _) in notes.items())
    assert not any("shard" in line for line in logged)
    results = with_worklists(night["results"], notes)
    assert results[0].worklist_failed and results[0].status == "published"
    markdown = summary_markdown(study, results)
    assert "1 failed;" in markdown and f"- **academic / t2d_2y**: worklist failed (ValueError); the reason is in {error}" in markdown
    with pytest.raises(SitesFailed, match=r"^1 of 1 site-task runs failed: academic/t2d_2y: worklist failed \(ValueError\); "):
        raise_if_failed(results)
    raise_if_failed(night["results"])  # the night itself did not fail


def test_a_registry_that_cannot_be_read_is_a_failure_not_no_champion(night, tmp_path, restore_tracking):
    from forewarn.flows import tracking

    bad = tmp_path / "store.db"
    bad.write_text("not a database")
    tracking.configure(f"sqlite:///{bad}")
    study, folder = _elsewhere(night, tmp_path, models=["network", "site"])
    notes = _run_worklists(study, _pull(night), tmp_path)
    note, failed = notes["academic", "t2d_2y"]
    assert failed and note.startswith("worklist failed (DatabaseError); the reason is in ") and "no champion" not in note
    assert (folder / "t2d_2y.parquet").exists() is False and (folder / "t2d_2y.error.json").is_file()


def test_no_one_eligible_is_no_worklist_and_worklists_off_remove_an_earlier_night_s(night, tmp_path, restore_tracking):
    from dataclasses import replace

    import pyarrow.compute as pc

    from forewarn.flows import tracking

    tracking.configure(night["uri"])
    pull = _pull(night)
    events = pq.read_table(next(pull.result.events_dir.glob("*.parquet")))
    died = pc.unique(events.filter(pc.equal(events["code"], "MEDS_DEATH"))["subject_id"])
    dead = tmp_path / "dead"
    dead.mkdir()
    pq.write_table(events.filter(pc.is_in(events["subject_id"], died)), dead / "0.parquet")
    study, folder = _elsewhere(night, tmp_path)
    notes = _run_worklists(study, replace(pull, result=replace(pull.result, events_dir=dead), digest="the dead"), tmp_path)
    assert notes["academic", "t2d_2y"] == (
        f"no worklist: no one at the site is eligible for t2d_2y tonight (the counts are in "
        f"{folder / 't2d_2y.error.json'} at the site); the earlier night's worklist was removed", False)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "t2d_2y.error.json"]
    (folder / "ckd3_2y.parquet").write_text("an earlier night's")
    off = study.model_copy(update={"worklist": study.worklist.model_copy(update={"enabled": False})})
    notes = _run_worklists(off, pull, tmp_path)
    assert notes == {("academic", "ckd3_2y"): ("no worklist: worklists are off or the task is not the study's tonight; "
                                               "the earlier night's worklist was removed", False)}
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]  # the error record is removed too


def test_an_alert_is_new_when_the_person_was_alerted_on_no_earlier_night_within_the_lookback(tmp_path):
    from datetime import date

    from forewarn.flows.worklist import alerted_table, new_alerts, read_alerted

    def day(d: str):
        return np.datetime64(d, "D")

    record = read_alerted(tmp_path / "none.parquet")  # no record yet
    record, new = new_alerts(record, np.array([3, 1, 2]), date(2026, 1, 1), 30)
    assert new.tolist() == [1, 2, 3]
    again, new = new_alerts(record, np.array([3, 1, 2]), date(2026, 1, 1), 30)  # the same night, run again
    assert new.tolist() == [1, 2, 3] and all((again[k] == record[k]).all() or k == "previous_alert_date" for k in again)
    path = tmp_path / "alerted.parquet"
    pq.write_table(alerted_table(again), path)
    record, new = new_alerts(read_alerted(path), np.array([2, 3, 4]), date(2026, 1, 2), 30)
    assert new.tolist() == [4]  # 2 and 3 were alerted the night before
    assert record["subject_id"].tolist() == [1, 2, 3, 4]
    assert record["previous_alert_date"][1] == day("2026-01-01") and np.isnat(record["previous_alert_date"][3])
    assert record["last_alert_date"].tolist() == [day("2026-01-01")] + [day("2026-01-02")] * 3
    # 45 days later: 1 is new again (its last alert is beyond the lookback), and the old entries are dropped
    record, new = new_alerts(record, np.array([1]), date(2026, 2, 15), 30)
    assert new.tolist() == [1] and record["subject_id"].tolist() == [1]
    assert record["first_alert_date"][0] == day("2026-02-15") and record["previous_alert_date"][0] == day("2026-01-01")
    # a lookback of 0: every night's alerts are new
    assert new_alerts(record, np.array([1]), date(2026, 2, 16), 0)[1].tolist() == [1]
    path.write_text("not an alert record")
    assert read_alerted(path)["subject_id"].size == 0


def test_a_worklist_without_alerts_has_no_new_ones_and_keeps_the_record(night, tmp_path):
    import json
    import shutil
    from dataclasses import replace

    from forewarn.features.labels import load_task
    from forewarn.flows.worklist import publish_locally

    stage = _cached_worklist(night)
    folder = tmp_path / "site"
    folder.mkdir()
    record = folder / "t2d_2y.alerted.parquet"
    shutil.copyfile(_worklists(night) / "t2d_2y.alerted.parquet", record)
    (folder / "t2d_2y.new.parquet").write_text("an earlier night's")
    summary = json.loads(stage.result["summary"].read_text()) | {"alerts": None}  # as a network model's
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    before = record.read_bytes()
    written, _ = publish_locally(folder, load_task("t2d_2y"), replace(stage, result={
        "predictions": stage.result["predictions"], "summary": tmp_path / "summary.json"}))
    assert written == [folder / "t2d_2y.parquet", folder / "t2d_2y.json"]
    assert json.loads((folder / "t2d_2y.json").read_text())["new_alerts"] is None
    assert not (folder / "t2d_2y.new.parquet").exists() and record.read_bytes() == before


def test_forewarn_worklist_shows_each_site_s_worklist_and_follow_up(night, demo_network, tmp_path):
    import json

    import yaml

    from forewarn.flows.cli import app

    study = night["work"] / "study.yaml"
    study.write_text(yaml.safe_dump(_study(demo_network)))
    result = CliRunner().invoke(app, ["worklist", str(study)])
    assert result.exit_code == 0, result.output
    summary = json.loads((_worklists(night) / "t2d_2y.json").read_text())
    f = summary["followup"]
    lines = result.output.splitlines()
    if summary["alert_rate"]["far"]:  # its own line after the first (test_worklist.py has it word for word)
        assert lines.pop(1).startswith(f"  the threshold alerts {summary['alert_rate']['rows']:.1%} of the list, ")
    assert lines[0] == (f"academic  t2d_2y  {summary['rows']:,} people, {summary['alerts']:,} alerts at the threshold "
                        f"{summary['threshold']:.4f} ({summary['alerts']:,} new: none in the 30 days before); scored "
                        f"by {MODEL} v1 (site's), published {summary['published_at']}")
    assert lines[1] == (f"  follow-up of {f['scorings']:,} scorings of {f['people']:,} people since "
                        f"{f['first_scored_since']} (kept 1,095 days): window passed {f['status']['window_passed']:,}, "
                        f"pending {f['status']['pending']:,}")
    assert lines[2] == ("    resolved 0 (outcome in the window or followed through the horizon without it): 0 with the "
                        "outcome, rate -, AUROC of the risks shown -")
    assert lines[3].startswith("    by age band: ") and lines[4].startswith("    by sex: F ") and len(lines) == 7
    assert lines[5].startswith("    by race: ") and lines[6].startswith("    by ethnicity: ")
    for args, message in ((["--site", "nowhere"], "has no site 'nowhere'; its sites are ['academic']"),
                          (["--task", "ckd3_2y"], "has no task 'ckd3_2y'; its sites are ['academic'] and its tasks "
                                                  "['t2d_2y']")):
        result = CliRunner().invoke(app, ["worklist", str(study), *args])
        assert result.exit_code == 2 and message in result.output
    elsewhere = tmp_path / "study.yaml"  # the same study from another folder: its sites' workdirs are there
    elsewhere.write_text(study.read_text())
    result = CliRunner().invoke(app, ["worklist", str(elsewhere)])
    assert result.exit_code == 0 and result.output == (
        f"academic  t2d_2y  no worklist in {tmp_path / 'sites' / 'academic' / 'work' / 'worklists' / 'scoring'}\n")


def test_a_later_pull_follows_up_the_scorings(night, tmp_path):
    """A pull two and a half years on: outcomes arrive for some scored people, others are
    seen past the horizon without one; the follow-up counts them exactly."""
    import json
    import shutil
    from dataclasses import replace
    from datetime import date, timedelta

    import pyarrow as pa

    from forewarn.features.labels import load_task
    from forewarn.flows.worklist import publish_locally
    from forewarn.records import schema

    stage = _cached_worklist(night)
    worklist = pd.read_parquet(stage.result["predictions"])
    last = worklist["subject_id"].map(_last_events(night["events"]))
    seen = (last >= worklist["prediction_time"] + pd.Timedelta(days=730)).to_numpy()  # the window closed when shown
    open_ = worklist[(last < worklist["prediction_time"] + pd.Timedelta(days=600)).to_numpy()]
    alerted, quiet = open_[open_["predicted_boolean_value"]], open_[~open_["predicted_boolean_value"]]
    folder = tmp_path / "site"
    written, failed = publish_locally(folder, load_task("t2d_2y"), stage, today=date(2026, 1, 1),
                                      events_dir=night["events"])
    assert failed is None and folder / "t2d_2y.scored.parquet" in written
    # later: the first 3 alerted and the first 2 not alerted have the outcome 30 days after their
    # record ended (and at least 91 days after the visit: past the gap), and are seen 800 days on;
    # the next 4 alerted and 5 not alerted are seen 800 days on without it; the rest are not seen again
    day = timedelta(days=1)
    outcome_at = {r.subject_id: max(last[r.Index] + 30 * day, r.prediction_time + 91 * day)
                  for r in [*alerted.iloc[:3].itertuples(), *quiet.iloc[:2].itertuples()]}
    extra = [(subject, when, "ICD10CM//E11.9") for subject, when in outcome_at.items()]
    # each seen again past the horizon (an outcome whose record then ends would wait, as a censored time)
    extra += [(r.subject_id, r.prediction_time + 800 * day, "Visit//OP")
              for r in [*alerted.iloc[:3].itertuples(), *quiet.iloc[:2].itertuples()]]
    extra += [(r.subject_id, r.prediction_time + 800 * day, "Visit//OP")
              for r in [*alerted.iloc[3:7].itertuples(), *quiet.iloc[2:7].itertuples()]]
    events = pa.concat_tables([pq.read_table(p) for p in sorted(night["events"].glob("*.parquet"))])
    more = schema.align(pa.table({schema.SUBJECT_ID: pa.array([e[0] for e in extra], pa.int64()),
                                  schema.TIME: pa.array([e[1] for e in extra], pa.timestamp("us")),
                                  schema.CODE: pa.array([e[2] for e in extra], pa.string()),
                                  schema.NUMERIC_VALUE: pa.nulls(len(extra), pa.float32()),
                                  schema.TEXT_VALUE: pa.nulls(len(extra), pa.string())}), schema.DATA_SCHEMA)
    later = tmp_path / "later"
    later.mkdir()
    pq.write_table(pa.concat_tables([events, more]).sort_by([(schema.SUBJECT_ID, "ascending")]), later / "0.parquet")
    # tonight's worklist is the earlier one (a stage from the same model); the record keeps the first nights
    shutil.copyfile(stage.result["summary"], tmp_path / "summary.json")
    publish_locally(folder, load_task("t2d_2y"), replace(stage, result={
        "predictions": stage.result["predictions"], "summary": tmp_path / "summary.json"}),
        today=date(2028, 7, 1), events_dir=later)
    followup = json.loads((folder / "t2d_2y.json").read_text())["followup"]
    before = int(seen.sum())
    assert followup["status"] == {"outcome": 5, "no_outcome": 9, "outcome_in_gap": 0, "outcome_before": 0,
                                  "window_passed": before, "died": 0, "pending": len(worklist) - before - 14,
                                  "not_in_pull": 0}
    assert followup["first_scored_since"] == "2026-01-01" and followup["scorings"] == len(worklist)
    assert followup["alerts"] == {"scorings": 14, "true_positive": 3, "false_positive": 4, "false_negative": 2,
                                  "true_negative": 5, "sensitivity": 3 / 5, "specificity": 5 / 9, "ppv": 3 / 7}
    # from what was known when shown (the subject's last event on night 1) to the outcome
    lead = np.array([(outcome_at[r.subject_id] - max(r.prediction_time, last[r.Index])).days
                     for r in alerted.iloc[:3].itertuples()])
    assert followup["lead_time_days"] == {"people": 3, "median": float(np.median(lead)),
                                          "q1": float(np.percentile(lead, 25)), "q3": float(np.percentile(lead, 75)),
                                          "min": int(lead.min()), "max": int(lead.max())}
    assert followup["resolved"]["with_outcome"] == 5 and 0 <= followup["resolved"]["auroc"] <= 1
    # each subgroup table splits the same scorings, alerts and outcomes
    assert list(followup["subgroups"]) == ["age_band", "sex", "race", "ethnicity"]
    assert {"White", "~"} <= set(followup["subgroups"]["race"])
    for column in ("age_band", "sex", "race", "ethnicity"):
        levels = followup["subgroups"][column].values()
        assert sum(g["scorings"] for g in levels) == len(worklist) and sum(g["with_outcome"] for g in levels) == 5
        assert sum(g["alerts"] for g in levels) == int(worklist["predicted_boolean_value"].sum())
    assert set(followup["subgroups"]["sex"]) <= {"F", "M", "~"} and len(followup["subgroups"]["age_band"]) > 1


def test_a_follow_up_that_fails_keeps_the_worklist_and_an_unreadable_record_is_set_aside(night, tmp_path):
    import json
    from datetime import date

    from forewarn.features.labels import load_task
    from forewarn.flows.worklist import publish_locally

    stage = _cached_worklist(night)
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "t2d_2y.scored.parquet").write_text("a record a crash left half written")
    written, failed = publish_locally(folder, load_task("t2d_2y"), stage, today=date(2026, 1, 1),
                                      events_dir=tmp_path / "no such pull")
    assert failed == "FileNotFoundError"
    assert (folder / "t2d_2y.parquet").read_bytes() == stage.result["predictions"].read_bytes()
    summary = json.loads((folder / "t2d_2y.json").read_text())
    assert summary["followup"]["error"] == "FileNotFoundError" and "no such pull" in summary["followup"]["reason"]
    assert summary["alerts"] > 0 and summary["new_alerts"]["new"] == summary["alerts"]  # the rest is tonight's
    [aside] = folder.glob("t2d_2y.scored.parquet.unreadable-*")
    assert aside.read_text() == "a record a crash left half written"
    from forewarn.flows.worklist import describe

    assert describe(summary)[-1] == f"follow-up failed: FileNotFoundError: {summary['followup']['reason']}"
    # the next night, with its pull, begins a new record (the old one stays set aside)
    written, failed = publish_locally(folder, load_task("t2d_2y"), stage, today=date(2026, 1, 2),
                                      events_dir=night["events"])
    followup = json.loads((folder / "t2d_2y.json").read_text())["followup"]
    assert failed is None and followup["scorings"] == summary["rows"] and "note" not in followup
    assert aside.exists()


def test_a_second_night_on_the_same_data_reuses_the_worklist(night, tmp_path_factory, restore_tracking, prefect_server):
    """Last in the file: it runs the night again in the module's folder (all of it cached)."""
    from forewarn.flows.nightly import nightly

    stages = sorted((night["work"] / "sites" / "academic" / "work" / "stages" / "worklist-t2d_2y").iterdir())
    assert len(stages) == 1
    marker = stages[0] / ".stage.json"
    made, before = marker.stat().st_mtime_ns, (_worklists(night) / "t2d_2y.parquet").read_bytes()
    with flow_workdir(night["work"], tmp_path_factory.mktemp("prefect-home")):
        [again] = nightly(night["study"])
    assert sorted(stages[0].parent.iterdir()) == stages and marker.stat().st_mtime_ns == made  # not scored again
    assert (_worklists(night) / "t2d_2y.parquet").read_bytes() == before
    assert again.worklist == night["results"][0].worklist and again.cached
    # a second run on the same night: the same alerts are new (none was alerted on an earlier night)
    import json

    summary = json.loads((_worklists(night) / "t2d_2y.json").read_text())
    assert summary["new_alerts"] == {"lookback_days": 30, "new": summary["alerts"], "repeated": 0}
    assert pq.read_table(_worklists(night) / "t2d_2y.new.parquet").num_rows == summary["alerts"]
