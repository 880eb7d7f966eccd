"""Learning curves (OHDSI PatientLevelPrediction's ``createLearningCurve``): how the
held-out discrimination grows with the training data, so that a site can tell whether
more people (or training across the sites: the network design) would be likely to help.

The train split's subjects are sampled in nested shares (each sample holds the smaller
ones), stratified by outcome: the subjects with an event row and those without are each
shuffled once (seeded) and the first ``ceil(share x n)`` of each are taken, with all
their train rows. At each share the two learners are fitted again on the sample alone,
with the registered model's settings:

- XGBoost's trees, with the model's hyperparameters (the search's best, if it ran), early
  stopping (or the cross-validated tree count) on the whole tuning split, and the same
  release under the rule of 11. The trees alone: not the L1-logistic offset they may
  start from, nor the blend, nor the calibrator (which moves no ranking);
- the L1-logistic, its C chosen on the whole tuning split as in training.

Each is scored on the whole held-out split (AUROC and AUPRC with patient-bootstrap 95%
CIs, ``metrics.evaluate``: withheld with 1 to 10 held-out events or non-events) and, for
the gap that overfitting opens, on its own training sample (the apparent AUROC and
AUPRC). A sample with fewer than ``leaf_min_cell`` (11) subjects with the outcome, or
without it, is not fitted (a model is not trained on fewer anywhere in Forewarn) and its
point says so; nor is any when the held-out split has fewer than 11 events or non-events
(every held-out metric would be withheld, or undefined with none, so the fits would publish
nothing but the apparent ones).

Aggregates only: each point's sample sizes under the rule of 11 (the subjects with the
outcome withheld where the subjects less them, those without it, are 1 to 10) and metrics of
models that never leave the site.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from forewarn.evaluation import metrics
from forewarn.models.train import (
    ModelConfig,
    fit_l1_logistic,
    fit_xgboost,
    split_masks,
    tree_count_method,
)
from forewarn.records import privacy, schema
from forewarn.records.config import Strict
from forewarn.records.progress import stage

XGBOOST, L1 = "xgboost", "l1_logistic"
LEARNERS = {XGBOOST: "XGBoost trees", L1: "L1-logistic"}


class LearningCurveConfig(Strict):
    fractions: list[float] = Field(
        default_factory=list,
        description="shares of the train split's subjects to refit the model's learners on (each in (0, 1]; e.g. "
        "[0.25, 0.5, 0.75, 1.0], as PatientLevelPrediction's trainFractions); empty: no learning curve",
    )

    @field_validator("fractions")
    @classmethod
    def _shares(cls, value: list[float]) -> list[float]:
        bad = [f for f in value if not 0 < f <= 1]
        if bad:
            raise ValueError(f"learning_curve.fractions must each lie in (0, 1] (a share of the train subjects); got {bad}.")
        if len(set(value)) != len(value):
            raise ValueError(f"learning_curve.fractions holds a share twice: {value}; list each once.")
        # whole percents: each is a step of the MLflow chart (learning_curve/<learner>/<metric>)
        odd = [f for f in value if abs(100 * f - round(100 * f)) > 1e-9]
        if odd:
            raise ValueError(f"learning_curve.fractions must be whole percents (0.01, 0.25, ...); got {odd}.")
        return sorted(value)


def train_samples(subjects: np.ndarray, y: np.ndarray, fractions: list[float], *, seed: int) -> list[np.ndarray]:
    """For each share in ``fractions`` (ascending), a boolean mask over the train rows
    (``subjects``, ``y``): the rows of a nested, outcome-stratified sample of subjects
    (see the module's docstring). A subject with an event row counts as one with the outcome."""
    subjects, y = np.asarray(subjects), np.asarray(y).astype(bool)
    people, index = np.unique(subjects, return_inverse=True)
    event = np.zeros(people.size, bool)
    np.logical_or.at(event, index, y)
    rng = np.random.default_rng(seed)
    order = [rng.permutation(np.flatnonzero(event)), rng.permutation(np.flatnonzero(~event))]
    masks = []
    for share in fractions:
        # rounded first, so that 0.3 x 10 takes 3 and not 4 (3.0000000000000004)
        chosen = np.concatenate([o[:math.ceil(round(share * o.size, 9))] for o in order])
        taken = np.zeros(people.size, bool)
        taken[chosen] = True
        masks.append(taken[index])
    return masks


def sample_sizes(subjects: np.ndarray, y: np.ndarray, *, hide_subjects: bool = False) -> dict:
    """A training sample's published sizes: ``rows``, ``subjects`` and ``event_subjects``
    (those with an event row), each suppressed below 11. The subjects less those with the
    outcome are those without it: when they are 1 to 10 (nearly everyone had it) the
    subjects with the outcome are withheld (None, ``event_subjects_withheld`` True) so that
    the few without stay hidden. ``hide_subjects`` withholds the subjects
    (``subjects_withheld``): where the whole train split has 1 to 10 subjects without the
    outcome, every share's subjects, less the train subjects with it that the report
    publishes (its sample size), would give about that share of them back."""
    y = np.asarray(y).astype(bool)
    n, events = int(np.unique(subjects).size), _subjects(subjects, y)
    complement = privacy.suppress(n - events) is None
    return {"rows": privacy.suppress(int(len(y))), "subjects": None if hide_subjects else privacy.suppress(n),
            "subjects_withheld": hide_subjects and privacy.suppress(n) is not None,
            "event_subjects": None if complement else privacy.suppress(events),
            "event_subjects_withheld": complement and privacy.suppress(events) is not None}


def _subjects(subjects: np.ndarray, mask: np.ndarray) -> int:
    return int(np.unique(subjects[mask]).size)


def learning_curve(X, rows: pd.DataFrame, models: ModelConfig, params: dict | None, config: LearningCurveConfig, *,
                   n_boot: int, seed: int, whole=None) -> dict:
    """The learning curve's record as it may leave the site: ``points`` (one per share,
    ascending), ``learners`` (their names) and ``last_step``: ``from`` and ``to`` (the
    last two fitted shares, in percent) and, for each learner, the held-out AUROC and AUPRC
    differences between them with paired 95% intervals (:func:`last_step`); None with
    fewer than two fitted shares. ``whole`` (the trees and the L1-logistic that training
    fitted on the whole train split with these settings, as ``fit_xgboost`` and
    ``fit_l1_logistic`` fit them here) is the 100% point's, which is then not fitted again."""
    y = rows[schema.BOOLEAN_VALUE].to_numpy(bool).astype(np.int8)
    subjects = rows[schema.SUBJECT_ID].to_numpy()
    masks = split_masks(rows)
    tr, tu, ho = (np.flatnonzero(masks[s]) for s in (schema.TRAIN, schema.TUNING, schema.HELD_OUT))
    count = tree_count_method(y[tu], models)
    min_cell = models.leaf_min_cell
    held_events = int(y[ho].sum())
    # every point's held-out metrics would be withheld, or undefined (one class): nothing to fit them for
    held_withheld = min(held_events, ho.size - held_events) < privacy.MIN_CELL
    # the train subjects without the outcome: 1 to 10 of them and no share's subjects are shown
    hide = privacy.suppress(int(np.unique(subjects[tr]).size) - _subjects(subjects[tr], y[tr].astype(bool))) is None
    points, kept = [], []  # kept: the last two fitted shares' held-out risks, for the last step
    with stage("learning curve") as counts:
        samples = train_samples(subjects[tr], y[tr], config.fractions, seed=seed)
        for share, sample in zip(config.fractions, samples, strict=True):
            idx = tr[sample]
            with_outcome = _subjects(subjects[idx], y[idx].astype(bool))
            without = _subjects(subjects[idx], ~y[idx].astype(bool))
            point = {"fraction": share, "percent": round(100 * share, 1), **sample_sizes(subjects[idx], y[idx], hide_subjects=hide),
                     "fitted": False, "reason": None}
            if held_withheld:
                point["reason"] = (f"the held-out split has fewer than {privacy.MIN_CELL} events or non-events, so every "
                                   "point's metrics would be withheld (or undefined, with none): none is fitted")
                points.append(point)
                continue
            if with_outcome < min_cell or without < min_cell:
                point["reason"] = (f"fewer than {min_cell} sampled train subjects with the outcome or without it: no "
                                   "model is fitted on so few")
                points.append(point)
                continue
            with stage(f"learning curve at {point['percent']:g}% of the train subjects") as fitted:
                if share == 1.0 and whole is not None:  # training's own fits on the whole train split
                    clf, l1 = whole
                else:
                    clf = fit_xgboost(X[idx], y[idx], X[tu], y[tu], models, params, tree_count=count, groups=subjects[idx])
                    l1, _ = fit_l1_logistic(X[idx], y[idx], X[tu], y[tu], models, subjects[idx])
                fitted.update(rows=int(idx.size), trees=int(clf.best_iteration) + 1, C=float(l1.C),
                              **({"reused": "training's"} if share == 1.0 and whole is not None else {}))
            scores = {XGBOOST: (clf.predict_proba(X[ho])[:, 1], clf.predict_proba(X[idx])[:, 1]),
                      L1: (l1.predict_proba(X[ho]), l1.predict_proba(X[idx]))}
            point |= {"fitted": True, "trees": int(clf.best_iteration) + 1, "C": float(l1.C), "held_out": {}, "apparent": {}}
            kept = [*kept[-1:], (point["percent"], {learner: score[0] for learner, score in scores.items()})]
            for learner, (on_held_out, on_sample) in scores.items():
                held = metrics.evaluate(y[ho].astype(bool), on_held_out, subjects[ho], n_boot=n_boot, seed=seed)
                point["held_out"][learner] = {k: held[k] for k in (
                    "auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "auprc_ci_low", "auprc_ci_high", "withheld")}
                apparent = metrics.point_metrics(y[idx].astype(bool), on_sample)
                point["apparent"][learner] = {k: apparent[k] for k in ("auroc", "auprc")}
            points.append(point)
        step = None
        if len(kept) == 2:
            step = {"from": kept[0][0], "to": kept[1][0], "level": round(STEP_LEVEL, 6), **last_step(
                y[ho].astype(bool), subjects[ho], kept[0][1], kept[1][1], n_boot=max(n_boot, STEP_BOOTSTRAP), seed=seed)}
        counts.update(shares=len(points), fitted=sum(p["fitted"] for p in points), rising=rising(step))
    return {"points": points, "learners": dict(LEARNERS), "last_step": step}


STEP_METRICS = ("auroc", "auprc")
# The last step's intervals: 95% over the four differences together (Bonferroni), so that a
# curve that has flattened reads "still rising" by chance about one time in twenty.
STEP_LEVEL = 1 - 0.05 / (len(LEARNERS) * len(STEP_METRICS))
STEP_BOOTSTRAP = 1000  # resamples at least: each 98.75% bound rests on the 6th of 1,000 draws


def last_step(y: np.ndarray, subjects: np.ndarray, before: dict[str, np.ndarray], last: dict[str, np.ndarray], *,
              n_boot: int, seed: int) -> dict[str, dict[str, dict[str, float]]]:
    """Each learner's held-out AUROC and AUPRC at the largest fitted share less at the one
    before it, on the same held-out rows (``before`` and ``last``: each learner's risks
    there), with the paired patient-bootstrap interval of the difference at ``STEP_LEVEL``
    (``metrics.paired_differences``: one resample scores both models, and both metrics)."""
    out = {}
    for learner in LEARNERS:  # one bootstrap scores both metrics
        both = metrics.paired_differences(y, last[learner], before[learner], subjects, n_boot=n_boot, seed=seed,
                                          level=STEP_LEVEL, metrics=STEP_METRICS)
        out[learner] = {metric: {k: round(v, 6) for k, v in both[metric].items()} for metric in STEP_METRICS}
    return out


def falling(step: dict | None) -> list[str]:
    """The learners whose AUROC or AUPRC fell beyond chance at the last step (a paired
    interval below 0), in ``LEARNERS``' order."""
    if not step:
        return []
    return [learner for learner in LEARNERS
            if any(d.get("ci_high") is not None and d["ci_high"] == d["ci_high"] and d["ci_high"] < 0
                   for d in (step.get(learner) or {}).values())]


def rising(step: dict | None) -> bool:
    """Whether the last step gained beyond chance: some learner's AUROC or AUPRC difference
    has a paired interval above 0."""
    return bool(step) and any(d["ci_low"] > 0 for learner in LEARNERS for d in (step.get(learner) or {}).values()
                              if d.get("ci_low") is not None and d["ci_low"] == d["ci_low"])
