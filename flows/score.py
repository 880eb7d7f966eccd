"""Score people with a registered model at the site: risks in the MEDS prediction format.

A champion is only of use once it scores the people a clinic is about to see. Its
registered MLflow model takes a feature matrix in its own columns (``flows/serving.py``);
this module makes that matrix the way the model's own study made its training matrix
(the feature settings its registration run recorded), from a pull's de-identified MEDS
events and a list of prediction times, and writes one row per prediction time in the
MEDS prediction schema: ``predicted_boolean_probability`` the calibrated risk (the risk
its report's thresholds refer to) and ``predicted_boolean_value`` whether it reaches the
alert threshold the model was published with (null for a network model, which has none
of its own). ``boolean_value`` is carried over where the times file has it, so that a
labelled file scores and evaluates in one go.

The output holds pseudonymous subject ids and shifted times, row by row: it stays at the
site, like the pull it came from. Nothing is logged to MLflow.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from forewarn.evaluation.validation import model_probabilities
from forewarn.features.featurize import (
    FeatureConfig,
    featurize,
    recorded_settings,
    subjects_by_shard,
)
from forewarn.features.labels import TaskSpec, latest_eligible_times, parse_task
from forewarn.flows import tracking
from forewarn.models.calibration import Calibrator
from forewarn.models.train import TrainedModels
from forewarn.records import schema
from forewarn.records.config import explain

log = logging.getLogger("forewarn")


class NoOneEligible(ValueError):
    """No one in the events is eligible for the task tonight (its message counts why)."""


def read_times(path: Path) -> pa.Table:
    """Prediction times from a parquet file with ``subject_id`` and ``prediction_time``
    (``boolean_value`` kept where present), as the MEDS label schema, in the file's order.
    Times are the pull's: naive, or UTC (its zone dropped). A clear error names the file
    and the column otherwise, with counts and never a value (a wrong id may be a real one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; pass a parquet file of subject_id and prediction_time "
                                "(a labels file from `forewarn label` will do).")
    try:
        table = pq.read_table(path)
    except pa.ArrowInvalid:
        raise ValueError(f"{path}: not a parquet file; write the prediction times with pandas' to_parquet "
                         "or `forewarn label`.") from None
    if table.num_rows == 0:
        raise ValueError(f"{path}: holds no prediction times.")
    missing = [c for c in (schema.SUBJECT_ID, schema.PREDICTION_TIME) if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the file needs subject_id and prediction_time "
                         f"(it has {table.column_names}).")
    columns = {}
    for name, kind, how in ((schema.SUBJECT_ID, pa.int64(), "the pull's de-identified subject ids (integers): "
                             "score ids from the pull's events, not the source's"),
                            (schema.PREDICTION_TIME, pa.timestamp("us"), "timestamps to the microsecond: round "
                             "finer times to microseconds"),
                            (schema.BOOLEAN_VALUE, pa.bool_(), "true, false or null: leave the column out if "
                             "the outcomes are not known")):
        if name not in table.column_names:
            continue
        column = table.column(name)
        if name == schema.PREDICTION_TIME and pa.types.is_timestamp(column.type) and column.type.tz is not None:
            if column.type.tz not in ("UTC", "+00:00", "Etc/UTC"):
                raise ValueError(f"{path}: prediction_time is in time zone {column.type.tz}; give the pull's times "
                                 "(naive, as in its events), e.g. pandas' .dt.tz_convert('UTC').dt.tz_localize(None) "
                                 "where the events are in UTC.")
            column = column.cast(pa.timestamp(column.type.unit))
        nulls = column.null_count
        if nulls and name != schema.BOOLEAN_VALUE:
            raise ValueError(f"{path}: column {name} has {nulls:,} null value(s); every row needs a subject_id and a "
                             "prediction_time.")
        try:
            columns[name] = column.cast(kind)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ValueError(f"{path}: column {name} ({column.type}) is not {how}.") from None
    return schema.align(pa.table(columns), schema.LABEL_SCHEMA, what=str(path))


FAR = 2.0  # an alert rate this many times the one a threshold was set for, or as small a share of it, is far off


def alert_rate(alerts: int, rows: int, set_for: float | None) -> dict | None:
    """How the share of ``rows`` at or above a model's threshold compares with the share of
    its tuning rows the threshold was set to alert (``set_for``, its alert budget): people
    unlike those it was set on (a worklist's latest visits against sampled past ones,
    another population) move it. ``far`` when one is ``FAR`` times the other or more: the
    alerts' sensitivity and PPV are then not the report's, and an alert budget
    (``--alert-budget``, ``worklist.alert_budget``) keeps the number of alerts."""
    if set_for is None or not rows or set_for <= 0:
        return None
    tonight = alerts / rows
    ratio = tonight / set_for
    return {"rows": tonight, "set_for": set_for, "ratio": ratio, "far": bool(ratio >= FAR or ratio <= 1 / FAR)}


def score(ref: str, events_dir: Path, times: pa.Table | None, out: Path, *, task: TaskSpec | None = None,
          eligible: bool = False, codes_path: Path | None = None, speed: FeatureConfig | None = None,
          by_risk: bool = False, own_threshold: bool = True, alert_budget: float | None = None,
          calibrator: Calibrator | None = None) -> dict:
    """Score ``times`` (the MEDS label schema; ``read_times``) on the events in
    ``events_dir`` with registered model ``ref`` (``NAME``, ``NAME@ALIAS`` or
    ``NAME/VERSION``: ``tracking.parse_model_ref``; ``NAME`` alone is its champion) of the
    current MLflow store, and write the predictions to ``out`` (parquet), one row per row
    of ``times`` in its order (a repeated time gets the same risk). Instead of ``times``,
    ``task`` (the model's own task definition: its digest is checked) scores each eligible
    person at their latest prediction time (``labels.latest_eligible_times``); so does
    ``eligible``, with the task the model's registration run recorded. ``by_risk`` writes
    the rows highest risk first instead (ties by subject id and time): a worklist.

    The alert (``predicted_boolean_value``) is the risk reaching the threshold the model
    was published with (none for a network model, nor with ``own_threshold`` False: a
    threshold chosen at another site); with ``alert_budget`` (alerts per 1,000 rows) it is
    instead exactly the ``ceil(budget * rows / 1000)`` highest risks (ties at the cut by
    subject id and time, as ``by_risk`` orders them), whatever the model. ``calibrator``
    replaces the model's own calibrator (applied to its uncalibrated risk): one fitted at
    this site by an external validation of this model (``evaluation.validation
    .local_calibrator``), so that the risks are this site's. Returns a summary of counts
    and the model, for the caller to print (it stays at the site)."""
    if alert_budget is not None and not 0 < alert_budget <= 1000:
        raise ValueError(f"the alert budget is alerts per 1,000 rows, above 0 and at most 1,000; got {alert_budget}.")
    if sum((times is not None, task is not None, eligible)) != 1:
        raise ValueError("give one of: the prediction times to score (--times), the model's task (--task), or "
                         "--eligible (the task its run recorded); the last two score each eligible person at their "
                         "latest prediction time.")
    events_dir, out = Path(events_dir), Path(out)
    if not events_dir.is_dir() or not any(events_dir.glob("*.parquet")):
        raise ValueError(f"{events_dir} holds no MEDS event shards (*.parquet); pass the events folder of a pull.")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name the predictions file to write, e.g. {out / 'predictions.parquet'}.")
    if codes_path is not None and not Path(codes_path).is_file():
        raise FileNotFoundError(f"{codes_path}: no such codes file; pass the pull's metadata/codes.parquet or leave "
                                "--codes out.")
    started = time.perf_counter()
    known = subjects_by_shard(events_dir)
    model = tracking.registered_model(ref)
    eligibility = None
    if eligible:
        with tempfile.TemporaryDirectory(prefix="forewarn-task-") as tmp:
            recorded_task = tracking.registered_task(model.run_id, Path(tmp))
        if recorded_task is None:
            raise ValueError(f"{model.label}: its registration run does not record its task definition "
                             "(config/task.json: runs of Forewarn before session 31); give it with --task.")
        # a run from before follow_up existed was labelled by the rule follow_up "negatives" keeps
        task = parse_task({"follow_up": "negatives"} | recorded_task, where=f"{model.label}'s task")
    if task is not None:
        if task.digest() != model.task_digest:
            raise ValueError(f"task {task.name} (digest {task.digest()}) is not the definition {model.label} was trained "
                             f"for ({model.task}, digest {model.task_digest}); give its own task file.")
        times, eligibility = latest_eligible_times(events_dir, task)
        if times.num_rows == 0:
            left = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in eligibility.items() if k != "candidates")
            raise NoOneEligible(f"no one in {events_dir} is eligible for {task.name}: of {eligibility['candidates']:,} "
                             f"subjects with a candidate prediction time, left out: {left}. Check that the events "
                             "are this site's pull and the task its model's; or score chosen times with --times.")
    keys = [schema.SUBJECT_ID, schema.PREDICTION_TIME]
    wanted = times.select(keys).to_pandas()
    distinct = wanted.drop_duplicates(ignore_index=True)
    with tempfile.TemporaryDirectory(prefix="forewarn-score-") as tmp:
        work = Path(tmp)
        tracking.download_inputs(model.run_id, work / "model")
        recorded = tracking.registered_features(model.run_id, work / "run")
        threshold, set_for = (tracking.registered_operating_point(model.run_id, work / "run") if own_threshold
                              else (None, None))
        if recorded is None:
            raise ValueError(f"{model.label}: its registration run {model.run_id} does not record the feature settings "
                             "its columns were computed with (config/study.json), so they cannot be made here. Name a "
                             "version registered by a Forewarn that records them (NAME/VERSION), or retrain.")
        try:
            features, dropped = recorded_settings(recorded, speed or FeatureConfig())
        except ValidationError as exc:
            raise ValueError(f"{model.label}: the feature settings it was trained with are not valid in this version "
                             f"of Forewarn:\n{explain(exc, FeatureConfig)}\nScore it with the Forewarn version that "
                             "trained it, or retrain.") from None
        if dropped:
            log.warning("%s was trained with feature settings this version of Forewarn no longer has (%s); its "
                        "columns are computed without them", model.label, ", ".join(dropped))
        # every row is scored, none chooses a vocabulary: the columns are the model's
        labels = pa.table({schema.SUBJECT_ID: distinct[schema.SUBJECT_ID].to_numpy(np.int64),
                           schema.PREDICTION_TIME: distinct[schema.PREDICTION_TIME].to_numpy("datetime64[us]"),
                           schema.BOOLEAN_VALUE: pa.nulls(len(distinct), pa.bool_())})
        subjects = np.unique(distinct[schema.SUBJECT_ID].to_numpy(np.int64))
        splits = pd.DataFrame({schema.SUBJECT_ID: subjects, schema.SPLIT: schema.HELD_OUT})
        columns = pd.read_parquet(work / "model" / "columns.parquet")
        matrix = featurize(events_dir, labels, splits, work / "features", features, codes_path=codes_path,
                           columns=columns)
        raw, risk, rows = model_probabilities(TrainedModels(work / "model"), matrix)
        if calibrator is not None:
            risk = calibrator(raw)
    # back to the file's rows and order (featurization sorts by subject and time)
    scored = rows[keys].assign(risk=risk)
    scored[schema.PREDICTION_TIME] = scored[schema.PREDICTION_TIME].astype("datetime64[us]")
    wanted[schema.PREDICTION_TIME] = wanted[schema.PREDICTION_TIME].astype("datetime64[us]")
    placed = wanted.assign(row=np.arange(len(wanted))).merge(scored, on=keys, how="left", validate="many_to_one")
    if placed["risk"].isna().any():  # every distinct time was featurized: a bug, not bad input
        raise RuntimeError(f"{int(placed['risk'].isna().sum())} prediction time(s) came back unscored.")
    if by_risk:
        placed = placed.sort_values(["risk", *keys], ascending=[False, True, True], kind="stable", ignore_index=True)
        times = times.take(placed.pop("row").to_numpy())
    risk = placed["risk"].to_numpy(np.float64)
    alerts_by = None if threshold is None else "threshold"
    alert, cut = None if threshold is None else risk >= threshold, None
    if alert_budget is not None:  # the site's capacity, not the model's threshold: exactly k alerts
        k = math.ceil(Fraction(str(alert_budget)) * risk.size / 1000)  # exact: at least 1, at most every row
        # the k first in the worklist's order: risk, then subject and time (ties at the cut split so)
        first = np.lexsort((placed[schema.PREDICTION_TIME].to_numpy(), placed[schema.SUBJECT_ID].to_numpy(), -risk))[:k]
        alert = np.zeros(risk.size, bool)
        alert[first] = True
        cut, alerts_by = float(risk[first[-1]]), "budget"
    table = pa.table({
        schema.SUBJECT_ID: placed[schema.SUBJECT_ID].to_numpy(np.int64),
        schema.PREDICTION_TIME: placed[schema.PREDICTION_TIME].to_numpy("datetime64[us]"),
        schema.BOOLEAN_VALUE: times.column(schema.BOOLEAN_VALUE),
        schema.PREDICTED_BOOLEAN_VALUE: pa.nulls(len(placed), pa.bool_()) if alert is None else pa.array(alert),
        schema.PREDICTED_BOOLEAN_PROBABILITY: risk,
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        pq.write_table(schema.align(table, schema.PREDICTION_SCHEMA, what="predictions"), partial)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    # ids the pull does not hold: another site's people, or ids not yet de-identified
    unknown = np.setdiff1d(subjects, known)
    rate = alert_rate(int(alert.sum()), len(placed), set_for) if alerts_by == "threshold" else None
    return {
        "model": model.label, "task": model.task, "trained_at": model.site, "study": model.study,
        "rows": len(placed), "distinct": len(distinct), "subjects": int(len(subjects)),
        "unknown_subjects": int(len(unknown)), "threshold": threshold, "alerts_by": alerts_by,
        "alert_budget": alert_budget, "budget_cut": cut, "alert_rate": rate,
        "alerts": None if alert is None else int(alert.sum()), "settings_dropped": dropped, "eligibility": eligibility,
        "calibrated_by": "its own calibrator" if calibrator is None else f"a {calibrator.method} calibrator fitted here",
        "parent_codes_unread": bool(features.parent_codes and codes_path is None),
        "seconds": round(time.perf_counter() - started, 1), "out": str(out),
    }
