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
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from forewarn.evaluation.validation import model_probabilities
from forewarn.features.featurize import FeatureConfig, featurize, recorded_settings
from forewarn.flows import tracking
from forewarn.models.train import TrainedModels
from forewarn.records import schema

log = logging.getLogger("forewarn")


def read_times(path: Path) -> pa.Table:
    """Prediction times from a parquet file with ``subject_id`` and ``prediction_time``
    (``boolean_value`` kept where present), as the MEDS label schema; a clear error naming
    the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; pass a parquet file of subject_id and prediction_time "
                                "(a labels file from `forewarn label` will do).")
    try:
        table = pq.read_table(path)
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{path}: not a parquet file ({exc}); write the prediction times with pandas' to_parquet "
                         "or `forewarn label`.") from None
    if table.num_rows == 0:
        raise ValueError(f"{path}: holds no prediction times.")
    try:
        return schema.align(table, schema.LABEL_SCHEMA, what=str(path))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"{path}: subject_id must be integers and prediction_time timestamps ({exc}).") from None


def score(ref: str, events_dir: Path, times: pa.Table, out: Path, *, codes_path: Path | None = None,
          speed: FeatureConfig | None = None) -> dict:
    """Score ``times`` (the MEDS label schema; ``read_times``) on the events in
    ``events_dir`` with registered model ``ref`` (``NAME``, ``NAME@ALIAS`` or
    ``NAME/VERSION``: ``tracking.parse_model_ref``; ``NAME`` alone is its champion) of the
    current MLflow store, and write the predictions to ``out`` (parquet). Returns a
    summary of counts and the model, for the caller to print (it stays at the site)."""
    events_dir, out = Path(events_dir), Path(out)
    if not events_dir.is_dir() or not any(events_dir.glob("*.parquet")):
        raise ValueError(f"{events_dir} holds no MEDS event shards (*.parquet); pass the events folder of a pull.")
    started = time.perf_counter()
    model = tracking.registered_model(ref)
    with tempfile.TemporaryDirectory(prefix="forewarn-score-") as tmp:
        work = Path(tmp)
        tracking.download_inputs(model.run_id, work / "model")
        recorded = tracking.registered_features(model.run_id, work / "run")
        threshold = tracking.registered_threshold(model.run_id, work / "run")
        if recorded is None:
            raise ValueError(f"{model.label}: its registration run {model.run_id} does not record the feature settings "
                             "its columns were computed with (config/study.json), so they cannot be made here.")
        features, dropped = recorded_settings(recorded, speed or FeatureConfig())
        if dropped:
            log.warning("%s was trained with feature settings this version of Forewarn no longer has (%s); its "
                        "columns are computed without them", model.label, ", ".join(dropped))
        subjects = np.unique(times.column(schema.SUBJECT_ID).to_numpy())
        # every row is scored, none chooses a vocabulary: the columns are the model's
        splits = pd.DataFrame({schema.SUBJECT_ID: subjects, schema.SPLIT: schema.HELD_OUT})
        columns = pd.read_parquet(work / "model" / "columns.parquet")
        matrix = featurize(events_dir, times, splits, work / "features", features, codes_path=codes_path,
                           columns=columns)
        _, risk, rows = model_probabilities(TrainedModels(work / "model"), matrix)
    # ids the pull does not hold: another site's people, or ids not yet de-identified
    held = [pq.read_table(p, columns=[schema.SUBJECT_ID]).column(0).to_numpy() for p in sorted(events_dir.glob("*.parquet"))]
    unknown = np.setdiff1d(subjects, np.concatenate(held))
    alert = None if threshold is None else risk >= threshold
    table = pa.table({
        schema.SUBJECT_ID: rows[schema.SUBJECT_ID].to_numpy(np.int64),
        schema.PREDICTION_TIME: rows[schema.PREDICTION_TIME].to_numpy("datetime64[us]"),
        schema.BOOLEAN_VALUE: pa.array(rows[schema.BOOLEAN_VALUE].astype("boolean")),
        schema.PREDICTED_BOOLEAN_VALUE: pa.nulls(len(rows), pa.bool_()) if alert is None else pa.array(alert),
        schema.PREDICTED_BOOLEAN_PROBABILITY: risk.astype(np.float64),
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    pq.write_table(schema.align(table, schema.PREDICTION_SCHEMA, what="predictions"), partial)
    partial.replace(out)
    summary = {
        "model": model.label, "task": model.task, "trained_at": model.site, "study": model.study,
        "rows": len(rows), "subjects": int(len(subjects)), "unknown_subjects": int(len(unknown)),
        "threshold": threshold, "alerts": None if alert is None else int(alert.sum()),
        "settings_dropped": dropped, "seconds": round(time.perf_counter() - started, 1), "out": str(out),
    }
    return summary
