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
    ("no column", "must have columns ['subject_id', 'prediction_time', 'boolean_value']; missing ['prediction_time']"),
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
