"""Scoring people at the site with a registered model (``forewarn score``).

One night of the flow registers academic's T2D model; scoring the night's held-out
prediction times from its pull with ``forewarn-t2d_2y-academic`` (its champion) must give
the very risks the flow's evaluation scored them with, and alert exactly where they reach
the threshold the model was published with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import flow_workdir
from typer.testing import CliRunner

pytestmark = pytest.mark.slow

MODEL = "forewarn-t2d_2y-academic"


@pytest.fixture(scope="module")
def night(tmp_path_factory, demo_network):
    work = tmp_path_factory.mktemp("work")
    with flow_workdir(work, tmp_path_factory.mktemp("prefect-home")):
        from prefect.testing.utilities import prefect_test_harness

        from forewarn.flows.nightly import nightly
        from forewarn.flows.study import parse_study

        study = parse_study({
            "name": "scoring", "demo": True, "tasks": ["t2d_2y"],
            "sites": [{"name": "academic", "source": {"location": str(demo_network["academic"])}}],
            "features": {"windows": ["365d", "full"]},  # not the default: the model's own settings must be used
            "evaluation": {"bootstrap": 20, "shap_rows": 100},
            "models": {"n_jobs": 1, "search": {"trials": 0}},
            "validation": {"designs": ["internal"]},
        }, base_dir=work)
        with prefect_test_harness(server_startup_timeout=180):
            nightly(study)
    stages = work / "sites" / "academic" / "work" / "stages"
    predictions = pd.read_parquet(next(stages.glob("train-t2d_2y/*/predictions/xgboost.parquet")))
    held = predictions[predictions["split"] == "held_out"].reset_index(drop=True)
    times = work / "times.parquet"
    held[["subject_id", "prediction_time", "boolean_value"]].to_parquet(times)
    return {"work": work, "events": next(stages.glob("pull/*/pull/events")), "held": held, "times": times,
            "uri": f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"}


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
    lines = result.output.strip().splitlines()
    assert lines[-2].startswith(f"scored {len(scored):,} prediction times of {scored['subject_id'].nunique():,} "
                                f"subjects with {MODEL} v1 (t2d_2y, trained at academic) in ")
    assert lines[-1] == (f"  {int(alerts.sum()):,} at or above the alert threshold {threshold:.4f} the model was "
                         "published with (predicted_boolean_value)")


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
    assert "  1 of the rows repeat an earlier row's subject and time (each row keeps its place)" in result.output


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
