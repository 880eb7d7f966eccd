"""Applying a trained model to data it was not trained on: another site (external
validation, with and without recalibration on that site's tuning split) or the current
champion on today's held-out rows (for the promotion rule). Only aggregates come back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from forewarn.evaluation import clinical, metrics
from forewarn.evaluation.evaluate import (
    demographics,
    json_safe,
    model_based,
    timed_rows,
    with_audit_levels,
)
from forewarn.features.featurize import FeatureMatrix
from forewarn.models.calibration import Calibrator, choose_recalibration
from forewarn.models.train import TrainedModels, load_primary
from forewarn.records import privacy, schema


def model_probabilities(trained: TrainedModels, matrix: FeatureMatrix) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(raw, calibrated) probabilities of ``trained``'s XGBoost on ``matrix``, whose
    columns must be the model's own (featurize with ``columns=``)."""
    raw, calibrated, rows, _ = _probabilities(trained, matrix)
    return raw, calibrated, rows


def _probabilities(trained: TrainedModels, matrix: FeatureMatrix):
    X, rows, columns = matrix.load()
    model = load_primary(trained)
    if X.shape[1] != model.n_features:
        raise ValueError(
            f"the matrix must have the model's {model.n_features} columns; got {X.shape[1]}. "
            "Featurize with columns=<the model's columns.parquet>."
        )
    raw = model.probability(X)
    calibrator = Calibrator.from_json(json.loads(trained.calibration_path.read_text()))
    age, sex = demographics(X, columns)
    return raw, calibrator(raw), rows, (age, sex)


def _summary(y, p, subjects, *, n_boot: int, seed: int, curve: pd.DataFrame | None = None) -> dict:
    record = metrics.evaluate(y, p, subjects, n_boot=n_boot, seed=seed)
    stats = clinical.calibration_stats(y, p, curve=curve)  # the ECE over ``curve``'s groups where it is published
    return record | {k: stats[k] for k in ("calibration_slope", "calibration_in_the_large", "ece", "ici", "e50", "e90")} | (
        model_based(record, p))


def external_validation(trained: TrainedModels, matrix: FeatureMatrix, *, n_boot: int = 200, seed: int = 0,
                        site: str = "site", threshold: float | None = None, curves: bool = False,
                        outcomes_path: Path | None = None, events_dir: Path | None = None) -> dict:
    """Metrics of a model from another site on this site's held-out rows, as shipped and
    after recalibration on this site's tuning rows (only when they hold at least 11 events
    and 11 non-events).

    ``subgroups`` holds the shipped model's metrics by age band, sex and ``site`` (this
    site's name: one level, the whole held-out split), and given this site's pull's
    ``events_dir`` by race and ethnicity too, under the rule of 11
    (``clinical.subgroup_metrics``). With ``threshold``, the operating point set at the
    model's own site, they add its sensitivity, specificity, PPV, NPV and alerts per
    1,000 here: what the same alert rule does at a site it was not set on
    (``subgroup_threshold``); and given this site's ``outcomes_path`` (the label stage's
    outcome times), each level's lead times at that threshold.

    With ``curves``, the record also holds the calibration groups (``calibration``: tenths
    of the shipped risk, merged under one ledger of cut-offs that the alert threshold's
    enters first, as the subgroups publish it; the recalibrated risks' means over the
    same groups, ``metrics.calibration_on_groups``) and the smoothed curve: for a
    validation whose record is the only thing published of this ranking. Not for the
    network design, whose site evaluation publishes cut-offs of the same risks under a
    ledger of its own.

    Only aggregates come back: the metrics, and the local calibrator, whose parameters
    are fits to the whole tuning split (a sigmoid's two coefficients) or to blocks of at
    least 11 rows, events and non-events (an isotonic calibrator's knots, see
    ``models.calibration.isotonic_blocks``)."""
    raw, calibrated, rows, (age, sex) = _probabilities(trained, matrix)
    y = rows[schema.BOOLEAN_VALUE].to_numpy(bool)
    split = rows[schema.SPLIT].to_numpy()
    held, tune = split == schema.HELD_OUT, split == schema.TUNING
    subjects = rows[schema.SUBJECT_ID].to_numpy()
    shipped_curve = None
    if curves:
        ledger = privacy.Cutoffs(y[held], calibrated[held])
        if threshold is not None:
            ledger.add(ledger.flagged(threshold))
        shipped_curve = metrics.calibration_curve(y[held], calibrated[held], cutoffs=ledger)
    record = {"as_shipped": _summary(y[held], calibrated[held], subjects[held], n_boot=n_boot, seed=seed,
                                     curve=shipped_curve)}
    frame = pd.DataFrame({"y": y[held], "p": calibrated[held], "subject_id": subjects[held],
                          "age_band": clinical.age_band(age[held]), "sex": sex[held], "site": site})
    frame, groups = with_audit_levels(frame, events_dir)
    timed = None if threshold is None else timed_rows(rows[held], calibrated[held], outcomes_path)
    if timed is not None:
        frame = frame.assign(prediction_time=timed["prediction_time"].to_numpy(),
                             outcome_time=timed["outcome_time"].to_numpy())
    record["subgroups"] = json_safe(clinical.subgroup_metrics(
        frame, groups=groups, n_boot=n_boot, seed=seed, threshold=threshold).to_dict(orient="records"))
    record["subgroup_threshold"] = {"threshold": threshold, "operating_point": "the operating point set at the model's site"}
    events, non_events = int(y[tune].sum()), int((~y[tune]).sum())
    if min(events, non_events) >= privacy.MIN_CELL:
        # The shipped calibrator is the first candidate: a refit on this site's tuning
        # split replaces it only if it beats it there by more than one standard error.
        refit, _ = choose_recalibration(raw[tune], y[tune], calibrated[tune], seed=seed, groups=subjects[tune])
        local = SHIPPED if refit is None else refit
        recalibrated = calibrated[held] if local is SHIPPED else local(raw[held])
        recal_curve = None if shipped_curve is None else metrics.calibration_on_groups(y[held], recalibrated, calibrated[held], shipped_curve)
        record["recalibrated"] = _summary(y[held], recalibrated, subjects[held], n_boot=n_boot, seed=seed,
                                          curve=recal_curve)
        record["recalibration"] = recalibration_summary(local)
    else:
        # A calibrator fitted to 1..10 events (or non-events) would carry their count in
        # its coefficients, and could not be trusted either.
        recal_curve = None
        record["recalibrated"] = None
        record["recalibration"] = {"method": None, "note": f"not recalibrated: this site's tuning split holds fewer "
                                                           f"than {privacy.MIN_CELL} events or non-events"}
    if shipped_curve is not None:
        # observed against predicted by tenth of risk, and smoothed (withheld with 1..10 events or non-events)
        record["calibration"] = {"as_shipped": json_safe(shipped_curve.to_dict(orient="records"))}
        if recal_curve is not None:
            record["calibration"]["recalibrated"] = json_safe(recal_curve.to_dict(orient="records"))
        record["smoothed_calibration"] = json_safe(clinical.smoothed_calibration(y[held], calibrated[held]).to_dict(
            orient="records"))
    return record


# The outcome of a recalibration that kept the model's own calibrator: no calibrator
# fitted on the validating site's tuning split beat it there (method "shipped").
SHIPPED = Calibrator("none")


def recalibration_summary(calibrator: Calibrator) -> dict:
    """What leaves the validating site of its local calibrator (see :func:`external_validation`):
    method ``shipped`` where none fitted there beat the model's own on that site's tuning
    split (cross-validated Brier against the shipped risks' Brier), which is then kept;
    ``none`` where the model's uncalibrated risks did best."""
    if calibrator is SHIPPED:
        return {"method": "shipped", "fitted_on": "tuning split of the validating site",
                "note": "kept as shipped: no calibrator fitted on this site's tuning split beat the model's own there"}
    summary: dict = {"method": calibrator.method, "fitted_on": "tuning split of the validating site"}
    if calibrator.method == "sigmoid":
        summary.update(a=calibrator.a, b=calibrator.b)
    elif calibrator.method == "isotonic":
        summary.update(knots=list(calibrator.x), rates=list(calibrator.y))
    return summary


def local_calibrator(recalibration: dict | None) -> Calibrator | None:
    """The local calibrator an external validation fitted on the validating site's tuning
    split, back from what it published of it (:func:`recalibration_summary`), to score the
    model's uncalibrated risks there; None where it was not recalibrated or kept the
    model's own calibrator (``shipped``)."""
    method = (recalibration or {}).get("method")
    if method in (None, "shipped"):
        return None
    if method == "sigmoid":
        return Calibrator("sigmoid", a=float(recalibration["a"]), b=float(recalibration["b"]))
    if method == "isotonic":
        return Calibrator("isotonic", tuple(map(float, recalibration["knots"])), tuple(map(float, recalibration["rates"])))
    return Calibrator("none")


def held_out_summary(trained: TrainedModels, matrix: FeatureMatrix, *, n_boot: int = 200, seed: int = 0) -> dict:
    """``trained``'s metrics on ``matrix``'s held-out rows (the champion on today's
    held-out rows, in its own columns) as they may leave the site: AUROC and AUPRC with
    patient-bootstrap intervals, Brier, calibration slope and calibration-in-the-large,
    all withheld with 1..10 events or non-events (``metrics.evaluate``)."""
    _, calibrated, rows = model_probabilities(trained, matrix)
    held = rows[schema.SPLIT].to_numpy() == schema.HELD_OUT
    return _summary(rows[schema.BOOLEAN_VALUE].to_numpy(bool)[held], calibrated[held],
                    rows[schema.SUBJECT_ID].to_numpy()[held], n_boot=n_boot, seed=seed)


def auroc_on(trained: TrainedModels, matrix: FeatureMatrix) -> float:
    """Held-out AUROC of ``trained`` on ``matrix`` (the champion on today's data)."""
    _, calibrated, rows = model_probabilities(trained, matrix)
    held = rows[schema.SPLIT].to_numpy() == schema.HELD_OUT
    return metrics.point_metrics(rows[schema.BOOLEAN_VALUE].to_numpy(bool)[held], calibrated[held])["auroc"]


def paired_auroc(candidate: TrainedModels, matrix: FeatureMatrix, champion: TrainedModels, champion_matrix: FeatureMatrix,
                 *, n_boot: int = 200, seed: int = 0) -> dict | None:
    """Held-out AUROC of ``candidate`` (on ``matrix``) minus the champion's (on
    ``champion_matrix``, the same labelled rows in its own columns), with a paired
    patient-bootstrap interval (``metrics.paired_difference``): the promotion rule's
    ``test: paired``. None when the held-out split holds fewer than 11 events or
    non-events, whose metrics are withheld (``privacy.MIN_CELL``). Only the three numbers
    leave the site."""
    _, new, rows = model_probabilities(candidate, matrix)
    _, old, old_rows = model_probabilities(champion, champion_matrix)
    key = [schema.SUBJECT_ID, schema.PREDICTION_TIME]
    held = rows[schema.SPLIT].to_numpy() == schema.HELD_OUT
    old_held = old_rows[schema.SPLIT].to_numpy() == schema.HELD_OUT
    ours = rows.loc[held, key + [schema.BOOLEAN_VALUE]].assign(new=new[held]).reset_index(drop=True)
    theirs = old_rows.loc[old_held, key].assign(old=old[old_held])
    both = ours.merge(theirs, on=key, how="inner", validate="one_to_one")
    if len(both) != len(ours):
        # No counts in the message: it may reach a report or another site.
        raise ValueError("the champion's matrix lacks some of the candidate's held-out rows; featurize it from the same "
                         "labels (columns=<the champion's columns.parquet>).")
    y = both[schema.BOOLEAN_VALUE].to_numpy(bool)
    if min(int(y.sum()), int((~y).sum())) < privacy.MIN_CELL:
        return None
    return metrics.paired_difference(y, both["new"].to_numpy(), both["old"].to_numpy(), both[schema.SUBJECT_ID].to_numpy(),
                                     n_boot=n_boot, seed=seed)
