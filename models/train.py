"""Fit XGBoost and an L1-logistic baseline on the train split, tuned on the tuning split.

Both models are saved without pickle: XGBoost in its own JSON format, the logistic
model as JSON coefficients. Predictions for every row go to
``predictions/<model>.parquet`` in the meds-evaluation prediction schema (plus a
``split`` column).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import xgboost as xgb
from pydantic import BaseModel, ConfigDict, Field
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from forewarn.features.featurize import FeatureMatrix
from forewarn.models.calibration import choose_calibrator
from forewarn.models.release import ReleaseSettings, release_trees
from forewarn.models.search import SearchConfig, objective_name, search_xgboost
from forewarn.records import privacy, schema
from forewarn.records.progress import stage

PRIMARY = "xgboost"
BASELINE = "l1_logistic"
AGE_SEX = "age_sex"
UNCALIBRATED = "xgboost_uncalibrated"
# The trees without the blend with the L1-logistic (with their offset where they boost from
# one), uncalibrated: a component of the registered model, evaluated beside it, never served.
TREES = "xgboost_trees"
MODELS = (PRIMARY, BASELINE, AGE_SEX)
AGE_COLUMN = "AGE/years/at_prediction/t"
FEMALE_COLUMNS = ("Gender//F/static/present/static",)
RARE_PREVALENCE = 0.02


class XGBoostConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n_estimators: int = Field(600, ge=1)
    learning_rate: float = Field(0.05, gt=0, le=1)
    max_depth: int = Field(4, ge=1, le=16)
    min_child_weight: float = Field(2.0, ge=0)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    colsample_bynode: float = Field(1.0, gt=0, le=1)
    num_parallel_tree: int = Field(1, ge=1, description="trees grown per boosting round and averaged (a boosted random forest)")
    reg_lambda: float = Field(1.0, ge=0)
    max_delta_step: float = Field(0.0, ge=0, description="cap on each leaf's step in log-odds; 0: no cap")
    early_stopping_rounds: int = Field(50, ge=1)


# Rare outcomes (train-split prevalence below RARE_PREVALENCE) take these values for
# every XGBoost setting that the study does not set itself (``rare_outcome_defaults``
# turns this off). Why, for a handful of events among thousands of rows:
# - min_child_weight is a floor on a leaf's hessian sum, sum p(1 - p), which for a rare
#   outcome is about the leaf's expected number of events: 2 (the default) asks for
#   about 1,000 rows per leaf at 0.2% prevalence, so the small high-risk groups that
#   carry the signal (a recent weight-loss or abdominal-pain visit) cannot get a leaf
#   of their own; 0.5 expected events can, and is still far from one row per leaf.
# - max_delta_step 5 caps each leaf's log-odds step: with hessians near zero a Newton
#   step -G / (H + lambda) is otherwise unbounded. XGBoost's parameter documentation
#   recommends 1-10 for logistic regression with extremely imbalanced classes. The cap
#   was 1 until session 6: times the learning rate that is 0.05 log-odds a tree, so in
#   the 30-70 trees that early stopping keeps on a few tuning events the model could
#   not lift a recent abdominal-pain visit (a 5-10% risk against 0.2%) above the crowd,
#   and the top of the ranking was ties. On six 20,000-people development networks 5
#   raised held-out AUROC and AUPRC in all five cells with 7+ held-out events (AUPRC
#   0.013-0.27 -> 0.028-0.34), and at 100,000 people AUPRC in both sites' cells (0.32 ->
#   0.33, 0.13 -> 0.21; AUROC -0.012 and +0.014) (benchmarks/RESULTS.md, session 6).
# - max_depth 3: a few dozen events support few interactions; shallower trees keep each
#   leaf's estimate on more events.
# Class weighting is not part of them: ``class_weight`` defaults to "none" (see
# ``ModelConfig``).
RARE_XGBOOST: dict[str, float | int] = {"max_depth": 3, "min_child_weight": 0.5, "max_delta_step": 5.0}
# Early stopping on a tuning split with a few dozen events picks the tree count from the
# noise of those events (9 tuning events stopped a fit at 7 trees). Below this many
# tuning events (or non-events), ``tree_count: auto`` picks it by cross-validation on the
# train split instead, whose folds together hold every training event. It is not the
# default: on the benchmark's 46-event academic pancreatic cell the folds (about 9
# events each) stopped at 8 trees, and elsewhere it moved held-out AUROC by no more
# than the seed noise while costing five more fits (benchmarks/RESULTS.md, session 5).
TREE_COUNT_CV_EVENTS = 100
# ``offset: auto`` boosts a rare outcome's trees from the L1-logistic's log-odds below this
# many training events. Session 7 (benchmarks/RESULTS.md) set 200 against the trees alone:
# with 17-151 training events held-out AUPRC rose in 9 of 10 development cells, with
# 215-263 AUROC fell in all four. Once the model blends with the L1 (``blend``, session 8)
# the offset pays only with few events: on top of the blend, in the six 20,000-people
# cells with 5+ held-out events (27-72 training events) it raised mean AUPRC by 0.019 at
# the same count of comparisons below a baseline, while in the four 100,000-people
# community cells (115-151 events) the blend alone fell below a baseline in none of 16
# comparisons and with the offset in 4, at equal means. T2D and CKD (150-550 training
# events) lost AUROC with it too.
OFFSET_MAX_EVENTS = 100
# ``blend`` scores the primary model as ``(1 - w) * XGBoost log-odds + w * L1 log-odds``
# with ``w`` the value of this grid with the best objective (ties to the smaller ``w``).
# ``tuned`` (session 8) scores it on the tuning split; on six 20,000-people development
# networks (benchmarks/RESULTS.md, session 8), against XGBoost alone, that cut the T2D and
# CKD comparisons in which the model fell below a baseline from 7 of 96 to 2 (CKD's mean
# AUPRC +0.013, T2D's level, AUROC level); for the rare outcome, from 8 of 24 to 5 (on top
# of the offset, six cells with 5+ held-out events) and, on eight 100,000-people cells
# without the offset, from 4 of 32 to 0. But a tuning split holds 5-60 events at that
# size, and the weight moved with them. ``crossfit`` (session 9, the default) scores it
# on the out-of-fold log-odds of every train row as well (a cross-validated super
# learner, van der Laan et al. 2007): on the same 36 cells it lost 6 comparisons of the
# kept cells against 7, raised mean AUROC against the L1 in every task (+0.001, +0.001,
# +0.006) and lifted the worst rare-outcome cell's AUROC difference from -0.041 to -0.000.
# ``blend_guard`` (session 10) keeps out the weights whose other metric on those rows is
# below the L1's alone: on the same networks it changed 3 of 72 weights, all for the rare
# outcome, whose cells then fell below a baseline in 3 of 24 comparisons against 4 (T2D
# and CKD unchanged). On the benchmark network it changed none.
# ``blend_rule: one_se`` (session 11, the default) then takes the largest allowed weight
# whose score is within one paired bootstrap standard error of the best's: on the same
# 35 cells (production models) the comparisons below a baseline fell from 9 of 140 to 7
# (rare outcome 3 -> 1 of 24, T2D 2 and CKD 0 of 48 unchanged) at the same means
# (rare AUPRC +0.008); the unpaired rule (the standard error of the best's score alone)
# went to the L1 so often that it fell below MEDS-Tab-style in 14.
BLEND_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))


class ModelConfig(BaseModel):
    """Model settings for a study."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    n_jobs: int = Field(0, ge=0, description="threads; 0 means every core")
    xgboost: XGBoostConfig = XGBoostConfig()
    l1_c_grid: list[float] = Field(default=[0.01, 0.03, 0.1, 0.3, 1.0], min_length=1)
    l1_tol: float = Field(
        1e-3, gt=0,
        description=(
            "liblinear's stopping tolerance for the L1 fits (scikit-learn's default is 1e-4, liblinear's own 1e-2; "
            "liblinear scales it by min(positives, negatives) / rows, so a rare outcome is solved far tighter still)"
        ),
    )
    search: SearchConfig = SearchConfig()
    class_weight: Literal["auto", "balanced", "none"] = Field(
        "none",
        description=(
            "balanced: scale_pos_weight = negatives/positives; auto: balanced below 2% prevalence; none (default): "
            "unweighted. Reweighting does not improve discrimination and miscalibrates risk (van den Goorbergh et "
            "al., JAMIA 2022); rare outcomes get rare_outcome_defaults instead"
        ),
    )
    rare_outcome_defaults: bool = Field(
        True, description="below 2% train prevalence, XGBoost settings the study leaves unset take RARE_XGBOOST's values"
    )
    offset: Literal["auto", "l1", "none"] = Field(
        "auto",
        description=(
            "what XGBoost's trees start from: none: one base rate for every row; l1: each row's L1-logistic log-odds "
            "(out-of-fold on the train split, cv_folds subject folds), so the trees learn what the linear model misses; "
            f"auto (default): l1 for a rare outcome (below 2% train prevalence, rare_outcome_defaults on) with fewer "
            f"than {OFFSET_MAX_EVENTS} training events, else none"
        ),
    )
    blend: Literal["crossfit", "tuned", "none"] | Annotated[float, Field(ge=0, le=1)] = Field(
        "crossfit",
        description=(
            "weight w of the L1-logistic in the primary model, which scores (1 - w) * XGBoost log-odds + w * L1 "
            "log-odds: the w of 0, 0.1, ..., 1 with the best objective (search.objective: AUPRC below 5% prevalence, "
            "else AUROC; ties to the smaller w), scored on the tuning rows and, for crossfit (default), also on every "
            "train row's out-of-fold log-odds (cv_folds subject folds; the trees refitted with the final tree count, "
            "the L1 at its C); tuned: on the tuning rows alone; a number fixes w; none: XGBoost alone"
        ),
    )
    blend_guard: bool = Field(
        True,
        description=(
            "the blend's weight is chosen only among the weights whose other metric (AUROC when the objective is AUPRC, "
            "AUPRC when it is AUROC), on the rows the weights are scored on, is at least the L1-logistic's alone (w = 1, "
            "which always qualifies): the model does not trade one metric below the baseline's for the other"
        ),
    )
    blend_guard_floor: Literal["l1", "better"] = Field(
        "l1",
        description=(
            "the floor of blend_guard: l1 (default): the L1-logistic's value of the other metric; better: the better of "
            "the L1-logistic's and XGBoost's alone (w = 0 or 1, one of which always qualifies), so the blend trades the "
            "other metric below neither of its parts"
        ),
    )
    blend_rule: Literal["best", "one_se"] = Field(
        "one_se",
        description=(
            "which of the weights the guard allows the blend takes: best: the one with the best objective; one_se: the "
            "largest (the nearest the L1-logistic) whose objective is below the best's by no more than one standard "
            "error of that difference (a paired one-standard-error rule; the errors from blend_rule_draws patient-level "
            "bootstrap resamples of the rows the weights are scored on)"
        ),
    )
    blend_rule_draws: int = Field(200, ge=20, description="bootstrap resamples for blend_rule one_se")
    tree_count: Literal["auto", "tuning", "cv"] = Field(
        "tuning",
        description=(
            "how the number of trees is chosen: tuning: early stopping on the tuning split; cv: early stopping on the "
            "mean of cv_folds subject-grouped folds of the train split, then one fit on all of train with that many "
            f"trees; auto: cv when the tuning split has fewer than {TREE_COUNT_CV_EVENTS} events or non-events"
        ),
    )
    cv_folds: int = Field(
        5, ge=2, le=20,
        description="folds for tree_count cv and the out-of-fold offset (subjects, stratified by whether they have an event)",
    )
    calibration: Literal["auto", "isotonic", "sigmoid", "none"] = Field(
        "auto", description="fitted on the tuning split; auto picks by cross-validated Brier score"
    )
    leaf_min_cell: int = Field(
        privacy.MIN_CELL, ge=1,
        description="every leaf of the XGBoost trees holds no train subject with the outcome or at least this many, and "
        "likewise without it, and every split's threshold this many subjects on either side (models.release): the "
        "trees leave the site, and a leaf's value gives its counts away. The L1-logistic likewise leaves out columns "
        "fewer subjects hold a value of (l1_columns). A study may not set it below 11; 1 turns it off (development "
        "measurements only)",
    )
    leaf_move_splits: bool = Field(
        True,
        description="a leaf that breaks leaf_min_cell is first mended by moving its split's threshold, on the same "
        "feature, to the one that obeys the rule with the largest gain (models.release); false: its split is collapsed",
    )


@dataclass(frozen=True)
class TrainedModels:
    dir: Path

    @property
    def xgboost_path(self) -> Path:
        return self.dir / "xgboost.json"

    @property
    def l1_path(self) -> Path:
        return self.dir / "l1_logistic.json"

    def predictions_path(self, model: str) -> Path:
        return self.dir / "predictions" / f"{model}.parquet"

    @property
    def summary_path(self) -> Path:
        return self.dir / "training.json"

    @property
    def calibration_path(self) -> Path:
        return self.dir / "calibration.json"

    @property
    def age_sex_path(self) -> Path:
        return self.dir / "age_sex.json"

    @property
    def offset_path(self) -> Path:
        """The L1-logistic the XGBoost trees boost from; absent when they start from a base rate."""
        return self.dir / "xgboost_offset.json"

    @property
    def blend_path(self) -> Path:
        """The blend's weight and L1-logistic (``ModelConfig.blend``); absent when XGBoost scores alone."""
        return self.dir / "xgboost_blend.json"


def _threads(config: ModelConfig) -> int:
    return config.n_jobs or os.cpu_count() or 1


def split_masks(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    split = rows[schema.SPLIT].to_numpy()
    return {name: split == name for name in schema.SPLITS}


def is_rare(y_train: np.ndarray) -> bool:
    """Whether the train split's prevalence is below ``RARE_PREVALENCE``."""
    return len(y_train) > 0 and float(np.mean(y_train)) < RARE_PREVALENCE


def pos_weight(y_train: np.ndarray, config: ModelConfig) -> float:
    """XGBoost's scale_pos_weight under the configured class weighting."""
    positives = max(int(np.sum(y_train)), 1)
    balanced = (len(y_train) - positives) / positives
    if config.class_weight == "balanced" or (config.class_weight == "auto" and is_rare(y_train)):
        return float(balanced)
    return 1.0


def rare_defaults_applied(y_train: np.ndarray, config: ModelConfig) -> dict[str, float | int]:
    """The ``RARE_XGBOOST`` settings this fit takes: none unless the outcome is rare and
    ``rare_outcome_defaults`` is on; never one that the study set itself."""
    if not (config.rare_outcome_defaults and is_rare(y_train)):
        return {}
    return {k: v for k, v in RARE_XGBOOST.items() if k not in config.xgboost.model_fields_set}


def xgboost_config(y_train, config: ModelConfig, params: dict | None = None) -> XGBoostConfig:
    """The XGBoost settings of a fit: the study's, with the rare-outcome defaults where
    they apply, updated with ``params`` (a search trial's or the search's best)."""
    return config.xgboost.model_copy(update={**rare_defaults_applied(y_train, config), **(params or {})})


def xgboost_params(y_train, config: ModelConfig, params: dict | None = None, eval_metric=None) -> dict:
    """The ``XGBClassifier`` keyword arguments shared by the local and the Dask fit
    (everything but threads and callbacks): ``xgboost_config``'s hyperparameters, hist
    trees, early stopping and the configured class weighting."""
    p = xgboost_config(y_train, config, params)
    return {
        "n_estimators": p.n_estimators,
        "learning_rate": p.learning_rate,
        "max_depth": p.max_depth,
        "min_child_weight": p.min_child_weight,
        "subsample": p.subsample,
        "colsample_bytree": p.colsample_bytree,
        "colsample_bynode": p.colsample_bynode,
        "num_parallel_tree": p.num_parallel_tree,
        "reg_lambda": p.reg_lambda,
        "max_delta_step": p.max_delta_step,
        "tree_method": "hist",
        "objective": "binary:logistic",
        "eval_metric": eval_metric or "logloss",
        "early_stopping_rounds": p.early_stopping_rounds,
        "scale_pos_weight": pos_weight(y_train, config),
        "base_score": base_score(y_train, pos_weight(y_train, config)),
        "random_state": config.seed,
    }


def base_score(y_train: np.ndarray, scale_pos_weight: float = 1.0) -> float:
    """The risk XGBoost's trees start from: the train split's (weighted) event rate, from
    its events and non-events rounded to a multiple of 11 (``privacy.rounded``). Left to
    itself XGBoost estimates the exact rate, and the model carries it wherever it goes:
    times the train rows (which the report publishes) it gives the exact train events,
    which with the labelled total give back tuning and held-out events the report shows
    as "<11". The first trees absorb the difference (a fraction of a percent of the rate
    with hundreds of events). 0.5 when either count rounds to 0."""
    events = privacy.rounded(int(np.sum(y_train)))
    non_events = privacy.rounded(int(len(y_train) - np.sum(y_train)))
    if events == 0 or non_events == 0:
        return 0.5
    return float(events * scale_pos_weight / (events * scale_pos_weight + non_events))


def offset_method(y_train: np.ndarray, config: ModelConfig) -> Literal["l1", "none"]:
    """What this fit's trees boost from (``ModelConfig.offset`` with auto resolved)."""
    if config.offset != "auto":
        return config.offset
    few = int(np.sum(y_train)) < OFFSET_MAX_EVENTS
    return "l1" if config.rare_outcome_defaults and is_rare(y_train) and few else "none"


def tuning_weights(y_tune: np.ndarray, spw: float) -> np.ndarray | None:
    """Row weights for the tuning split under class weighting (positives weighted by
    ``spw``), so that early stopping watches the loss the trees are trained on; None
    when unweighted."""
    return None if spw == 1.0 else np.where(np.asarray(y_tune) > 0, spw, 1.0)


def tree_count_method(y_tune: np.ndarray, config: ModelConfig) -> Literal["tuning", "cv"]:
    """How this fit chooses its number of trees (``ModelConfig.tree_count`` with auto resolved)."""
    if config.tree_count != "auto":
        return config.tree_count
    events = int(np.sum(y_tune))
    return "cv" if min(events, len(y_tune) - events) < TREE_COUNT_CV_EVENTS else "tuning"


def subject_folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train rows, test rows) folds with every subject's rows in one fold, subjects
    with an event dealt round-robin over the folds after a seeded shuffle, and the
    others likewise, so each fold holds a k-th of the subjects with events."""
    subjects, row_subject = np.unique(np.asarray(groups), return_inverse=True)
    case = np.bincount(row_subject, weights=np.asarray(y, float), minlength=subjects.size) > 0
    rng = np.random.default_rng(seed)
    fold = np.empty(subjects.size, np.int64)
    for members in (np.flatnonzero(case), np.flatnonzero(~case)):
        rng.shuffle(members)
        fold[members] = np.arange(members.size) % k
    row_fold = fold[row_subject]
    return [(np.flatnonzero(row_fold != f), np.flatnonzero(row_fold == f)) for f in range(k)]


def cv_tree_count(X, y, groups, kwargs: dict, folds: int, threads: int, margin=None) -> tuple[int, float]:
    """The number of trees at which the mean held-out loss of ``folds`` subject-grouped
    folds of (``X``, ``y``) stops improving (``kwargs``' early stopping rounds), and that
    loss. ``kwargs`` are ``xgboost_params``' keyword arguments; class weights become row
    weights, so each fold's held-out loss is weighted as the trees are trained."""
    metric = kwargs["eval_metric"]
    params = {k: kwargs[k] for k in ("learning_rate", "max_depth", "min_child_weight", "subsample", "colsample_bytree",
                                     "colsample_bynode", "num_parallel_tree", "reg_lambda", "max_delta_step", "tree_method", "objective")}
    params.update(eval_metric=metric, seed=kwargs["random_state"], nthread=threads)
    spw = kwargs["scale_pos_weight"]
    weight = None if spw == 1.0 else np.where(np.asarray(y) > 0, spw, 1.0)
    result = xgb.cv(
        params, xgb.DMatrix(X, label=y, weight=weight, base_margin=margin), num_boost_round=kwargs["n_estimators"],
        folds=subject_folds(y, groups, folds, kwargs["random_state"]), early_stopping_rounds=kwargs["early_stopping_rounds"],
        as_pandas=False,
    )
    last = metric[-1] if isinstance(metric, list) else metric
    curve = result[f"test-{last}-mean"]  # xgb.cv cuts the curves at the best round
    return len(curve), float(curve[-1])


def fit_xgboost(
    X_train, y_train, X_tune, y_tune, config: ModelConfig, params: dict | None = None, callbacks=None, eval_metric=None,
    *, tree_count: Literal["tuning", "cv"] = "tuning", groups=None, margins: tuple[np.ndarray, np.ndarray] | None = None,
) -> xgb.XGBClassifier:
    """Hist trees on sparse input with early stopping on the tuning split's log-loss
    (weighted like the train split when class weighting is on).

    ``params`` overrides the configured hyperparameters (used by the search); early
    stopping watches the last of ``eval_metric`` (log-loss by default). With
    ``tree_count`` "cv" the number of trees comes from ``cv_tree_count`` on the train
    split (folds by ``groups``, the rows' subjects; each row its own subject when None)
    and the model is then fitted on all of train with that many trees. ``margins`` (train,
    tuning) are per-row starting log-odds (XGBoost's ``base_margin``): the trees then
    boost from them rather than from one base rate. (With both, a cross-validation fold's
    training rows start from out-of-fold offsets whose L1 fits saw that fold's labels, so
    its held-out loss, and the tree count, is slightly optimistic; the offset's default
    pairs with early stopping on the tuning split, whose offsets come from train alone.)"""
    kwargs = xgboost_params(y_train, config, params, eval_metric)
    w = tuning_weights(y_tune, kwargs["scale_pos_weight"])
    cv_trees = None
    if tree_count == "cv":
        groups = np.arange(len(y_train)) if groups is None else groups
        cv_trees, _ = cv_tree_count(X_train, y_train, groups, kwargs, config.cv_folds, _threads(config),
                                    None if margins is None else margins[0])
        kwargs.update(n_estimators=cv_trees, early_stopping_rounds=None)
    clf = xgb.XGBClassifier(**kwargs, callbacks=callbacks, n_jobs=_threads(config))
    clf.fit(X_train, y_train, eval_set=[(X_tune, y_tune)], sample_weight_eval_set=None if w is None else [w], verbose=False,
            base_margin=None if margins is None else margins[0], base_margin_eval_set=None if margins is None else [margins[1]])
    clf = released(clf, X_train, y_train, groups, kwargs, None if margins is None else margins[0], config)
    if cv_trees is not None:
        # As early stopping would: the saved model then says how many trees it uses.
        clf.get_booster().set_attr(best_iteration=str(cv_trees - 1))
    return clf


def released(clf: xgb.XGBClassifier, X_train, y_train, groups, kwargs: dict, margin, config: ModelConfig) -> xgb.XGBClassifier:
    """``clf`` with its trees made fit to leave the site (``models.release``): every leaf
    holds 0 or at least ``config.leaf_min_cell`` train subjects with the outcome and
    without it (``groups``: the rows' subjects; each row its own when None), its values
    refitted on all train rows. Its attributes (``best_iteration``) are kept, and
    ``release_`` holds ``release_trees``' summary (None when the rule is off)."""
    if config.leaf_min_cell <= 1:
        clf.release_ = None
        return clf
    groups = np.arange(len(y_train)) if groups is None else np.asarray(groups)
    settings = dataclasses.replace(ReleaseSettings.from_params(kwargs), move_splits=config.leaf_move_splits)
    booster, summary = release_trees(clf.get_booster(), X_train, y_train, groups, settings, base_margin=margin,
                                     min_cell=config.leaf_min_cell)
    out = xgb.XGBClassifier(**kwargs, n_jobs=_threads(config))
    out.load_model(booster.save_raw("json"))
    out.release_ = summary
    if hasattr(clf, "evals_result_"):  # the fit's early-stopping record (of the trees before release)
        out.evals_result_ = clf.evals_result_
    return out


def fit_xgboost_dask(
    client, X_train: sp.csr_matrix, y_train: np.ndarray, X_tune: sp.csr_matrix, y_tune: np.ndarray,
    config: ModelConfig, params: dict | None = None, *, tree_count: Literal["tuning", "cv"] = "tuning", groups=None,
    margins: tuple[np.ndarray, np.ndarray] | None = None,
) -> xgb.XGBClassifier:
    """``fit_xgboost`` on a Dask cluster with ``xgboost.dask``: the same hyperparameters,
    class weighting and early stopping on the tuning split, trained by every worker of
    ``client`` (a ``distributed.Client``) on its share of the rows.

    The CSR splits are cut into one row block per worker and scattered from this
    process; each block stays a scipy CSR matrix on its worker, so unstored entries
    stay missing (not zero), as in the local fit. Threads per worker are the worker's
    own unless ``config.n_jobs`` sets them. Row subsampling (``subsample`` < 1) is
    drawn per worker, so the trees differ from the local ones as another seed's would
    (same AUROC up to seed noise); with ``subsample`` = 1 they agree with the local fit
    (on large data the quantile sketch merged across workers may still move a split).

    With ``tree_count`` "cv" the number of trees is chosen as in ``fit_xgboost``, by
    ``cv_tree_count`` in this process (it is chosen where the tuning split has few
    events, so on data a machine holds), and the cluster fits that many trees.
    ``margins`` are the rows' starting log-odds, as in ``fit_xgboost`` (chunked like the rows).

    Returns a plain (local) ``XGBClassifier`` holding the trained booster, so that
    saving, predicting and explaining are the local code paths."""
    from xgboost import dask as dxgb

    n_parts = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    X_tr, y_tr = _dask_rows(client, X_train, y_train, n_parts)
    X_tu, y_tu = _dask_rows(client, X_tune, y_tune, n_parts)
    kwargs = xgboost_params(y_train, config, params)
    cv_trees = None
    if tree_count == "cv":
        groups = np.arange(len(y_train)) if groups is None else groups
        cv_trees, _ = cv_tree_count(X_train, y_train, groups, kwargs, config.cv_folds, _threads(config),
                                    None if margins is None else margins[0])
        kwargs.update(n_estimators=cv_trees, early_stopping_rounds=None)
    w = tuning_weights(y_tune, kwargs["scale_pos_weight"])
    w_tu = None if w is None else [da_like(w, y_tu)]
    margin_tr = None if margins is None else da_like(margins[0], y_tr)
    margin_tu = None if margins is None else [da_like(margins[1], y_tu)]
    dask_clf = dxgb.DaskXGBClassifier(**kwargs, n_jobs=config.n_jobs or None)
    dask_clf.client = client
    # xgboost.dask looks up distributed.get_client() even when given a client: make
    # this one current, as it need not be the process's default client.
    with client.as_current():
        dask_clf.fit(X_tr, y_tr, eval_set=[(X_tu, y_tu)], sample_weight_eval_set=w_tu, verbose=False,
                     base_margin=margin_tr, base_margin_eval_set=margin_tu)
    raw = dask_clf.get_booster().save_raw("json")
    clf = xgb.XGBClassifier(**kwargs, n_jobs=_threads(config))
    clf.load_model(raw)
    clf = released(clf, X_train, y_train, groups, kwargs, None if margins is None else margins[0], config)
    if cv_trees is not None:
        clf.get_booster().set_attr(best_iteration=str(cv_trees - 1))
    return clf


def da_like(values: np.ndarray, like):
    """``values`` as a Dask array chunked like the 1-d Dask array ``like``."""
    import dask.array as da

    return da.from_array(np.asarray(values), chunks=like.chunks)


def _dask_rows(client, X: sp.csr_matrix, y: np.ndarray, n_parts: int):
    """``X`` and ``y`` as Dask arrays of ``n_parts`` row blocks (CSR blocks scattered
    round-robin over the workers, one column chunk)."""
    import dask.array as da

    X = sp.csr_matrix(X, dtype=np.float32)
    bounds = np.unique(np.linspace(0, X.shape[0], min(n_parts, max(X.shape[0], 1)) + 1).astype(int))
    spans = list(zip(bounds[:-1], bounds[1:], strict=True))
    futures = client.scatter([X[a:b] for a, b in spans], hash=False)
    meta = sp.csr_matrix((0, X.shape[1]), dtype=np.float32)
    blocks = [
        da.from_delayed(f, shape=(b - a, X.shape[1]), dtype=np.float32, meta=meta)
        for f, (a, b) in zip(futures, spans, strict=True)
    ]
    X_da = da.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
    y_da = da.from_array(np.asarray(y), chunks=(tuple(int(b - a) for a, b in spans),))
    return X_da, y_da


@dataclass(frozen=True)
class L1Logistic:
    """A fitted L1-regularised logistic regression on max-abs-scaled sparse features
    (``l1_columns``). ``coef`` holds the coefficients on the scaled features and ``scale``
    the scales; the model saved (``to_json``) holds only their ratio, each feature's weight
    on its unscaled value, as the scales are each one person's largest value. A loaded
    model has scale 1 and those weights as ``coef``."""

    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    C: float

    def margin(self, X: sp.spmatrix) -> np.ndarray:
        """The log-odds of every row of ``X`` (unscaled features). A missing value (NaN, as
        a dense input marks an absent feature) counts as 0, as an unstored entry does."""
        if sp.issparse(X):
            if np.isnan(X.data).any():
                X = X.copy()
                X.data = np.nan_to_num(X.data, nan=0.0)
        else:
            X = np.nan_to_num(np.asarray(X, dtype=np.float64), nan=0.0)
        return np.asarray(X @ self.weights).ravel() + self.intercept

    def predict_proba(self, X: sp.spmatrix) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.margin(X)))

    @property
    def weights(self) -> np.ndarray:
        """Each feature's weight on its unscaled value: the log-odds per unit."""
        return self.coef / self.scale

    def to_json(self) -> dict:
        """C, the intercept and the weights on the unscaled features; no scale (see the class)."""
        return {"C": self.C, "intercept": self.intercept, "weights": self.weights.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> L1Logistic:
        if "weights" not in data:  # saved before session 18, with its scales
            return cls(np.asarray(data["scale"]), np.asarray(data["coef"]), float(data["intercept"]), float(data["C"]))
        weights = np.asarray(data["weights"], dtype=np.float64)
        return cls(np.ones_like(weights), weights, float(data["intercept"]), float(data["C"]))


def _l1_fit(Xs_train: sp.csr_matrix, y_train: np.ndarray, c: float, seed: int, tol: float) -> tuple[np.ndarray, float]:
    """One liblinear L1 fit at ``C = c``: the coefficients (on the scaled features) and the intercept."""
    lr = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=c, tol=tol, max_iter=1000, random_state=seed)
    lr.fit(Xs_train, y_train)
    return lr.coef_.ravel().copy(), float(lr.intercept_[0])


def l1_columns(X_train, groups=None, min_cell: int = privacy.MIN_CELL) -> tuple[np.ndarray, np.ndarray]:
    """Each column's scale for fitting the L1-logistic and whether it may enter the fit,
    from the train rows ``X_train`` (``groups``: their subjects; each row its own when None).

    The scale is the column's largest absolute value (max-abs scaling; 1 for an empty
    column). It is one person's value, so it stays at the site: the model that leaves
    carries only each column's weight on the unscaled feature (``L1Logistic.to_json``). A
    column that fewer than ``min_cell`` subjects hold a nonzero value of is left out
    (coefficient 0): its coefficient would be fitted on those few people's outcomes alone."""
    C = sp.csc_matrix(X_train)
    groups = np.arange(C.shape[0]) if groups is None else np.asarray(groups)
    # In the matrix's own precision, as scikit-learn's MaxAbsScaler gives it (float32 for Forewarn's matrices).
    scale = np.ones(C.shape[1], dtype=C.dtype if np.issubdtype(C.dtype, np.floating) else np.float64)
    kept = np.zeros(C.shape[1], bool)
    for j in range(C.shape[1]):
        start, end = C.indptr[j], C.indptr[j + 1]
        values = np.abs(C.data[start:end])
        nonzero = values > 0  # NaN (missing) is not
        if nonzero.any():
            scale[j] = values[nonzero].max()
            kept[j] = np.unique(groups[C.indices[start:end][nonzero]]).size >= min_cell
    return scale, kept


def _scaled(X_train, groups=None, min_cell: int = privacy.MIN_CELL) -> tuple[np.ndarray, sp.csr_matrix]:
    """``l1_columns``' scales and ``X_train`` scaled by them, the columns left out zeroed
    (L1 keeps a zero column's coefficient at 0), as the float64 canonical CSR liblinear
    works in."""
    scale, kept = l1_columns(X_train, groups, min_cell)
    Xs_train = sp.csr_matrix(X_train @ sp.diags(kept / scale), dtype=np.float64)
    Xs_train.sum_duplicates()  # canonical CSR, as scikit-learn's input check makes it in place anyway
    return scale, Xs_train


def crossfit_l1_margins(X_train, y_train, groups, C: float, folds: int, seed: int, tol: float,
                        min_cell: int = privacy.MIN_CELL) -> np.ndarray:
    """Out-of-fold L1-logistic log-odds for every train row: ``folds`` subject-grouped
    folds (``subject_folds``), each scored by an L1 fit at ``C`` (its own scales and
    columns, ``l1_columns`` at ``min_cell``) on the other folds, so no row's offset has
    seen its own label.

    When the other folds hold one class only (fewer subjects with an event than folds),
    that fold's rows get the other folds' smoothed base rate, log((e + 1/2) / (n - e + 1/2)),
    as an intercept-only model would give them."""
    y_train = np.asarray(y_train)
    out = np.empty(X_train.shape[0])
    for fit_rows, score_rows in subject_folds(y_train, groups, folds, seed):
        events = int(y_train[fit_rows].sum())
        if events in (0, fit_rows.size):
            out[score_rows] = np.log((events + 0.5) / (fit_rows.size - events + 0.5))
            continue
        scale, Xs = _scaled(X_train[fit_rows], np.asarray(groups)[fit_rows], min_cell)
        coef, intercept = _l1_fit(Xs, y_train[fit_rows], C, seed, tol)
        out[score_rows] = L1Logistic(scale, coef, intercept, C).margin(X_train[score_rows])
    return out


def crossfit_tree_margins(X_train, y_train, groups, config: ModelConfig, params: dict | None, n_trees: int,
                          margin: np.ndarray | None = None, offset_c: float | None = None) -> np.ndarray:
    """Out-of-fold XGBoost log-odds for every train row: ``config.cv_folds`` subject-grouped
    folds (``subject_folds``, the folds ``crossfit_l1_margins`` cuts at the same seed), each
    scored by trees with the final fit's settings and ``n_trees`` trees (no early stopping)
    fitted on the other folds; from ``margin`` (the train rows' offsets) when the trees boost
    from one. A fold whose other folds hold one class only gets their smoothed base rate
    (or, with offsets, its own offsets).

    With ``offset_c`` (the L1's C), the offsets the fold's trees are *fitted* from are
    recomputed out of fold within the other folds alone (``crossfit_l1_margins`` on them,
    nested), as the final fit's are within the whole train split; ``margin``'s own values
    there came from L1 fits that saw the scored fold's labels. The scored rows still start
    from ``margin``: an L1 fitted on the other folds, which is what it holds for them when
    it comes from ``crossfit_l1_margins`` with the same folds."""
    y_train = np.asarray(y_train)
    groups = np.asarray(groups)
    kwargs = xgboost_params(y_train, config, params)
    kwargs.update(n_estimators=n_trees, early_stopping_rounds=None)
    out = np.empty(X_train.shape[0])
    for fit_rows, score_rows in subject_folds(y_train, groups, config.cv_folds, config.seed):
        events = int(y_train[fit_rows].sum())
        start = None if margin is None else margin[score_rows]
        if events in (0, fit_rows.size):
            out[score_rows] = np.log((events + 0.5) / (fit_rows.size - events + 0.5)) if start is None else start
            continue
        fit_margin = None
        if margin is not None:
            fit_margin = margin[fit_rows] if offset_c is None else crossfit_l1_margins(
                X_train[fit_rows], y_train[fit_rows], groups[fit_rows], offset_c, config.cv_folds, config.seed, config.l1_tol)
        clf = xgb.XGBClassifier(**kwargs, n_jobs=_threads(config))
        clf.fit(X_train[fit_rows], y_train[fit_rows], base_margin=fit_margin, verbose=False)
        try:  # as the final fit's trees are released, so that the blend weighs trees like the shipped ones
            clf = released(clf, X_train[fit_rows], y_train[fit_rows], groups[fit_rows], kwargs, fit_margin, config)
        except ValueError:  # the other folds hold 1..10 subjects of a class: no tree of theirs could leave
            out[score_rows] = np.log((events + 0.5) / (fit_rows.size - events + 0.5)) if start is None else start
            continue
        out[score_rows] = clf.predict(X_train[score_rows], output_margin=True, base_margin=start)
    return out


def offset_margins(X_train, y_train, X_tune, groups, l1: L1Logistic, config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Where trees that boost from ``l1`` start: the train rows' out-of-fold L1 log-odds
    (``config.cv_folds`` folds of ``groups``, at ``l1``'s C) and the tuning rows' log-odds
    under ``l1`` itself."""
    return (crossfit_l1_margins(X_train, y_train, groups, l1.C, config.cv_folds, config.seed, config.l1_tol,
                                config.leaf_min_cell), l1.margin(X_tune))


def l1_record(l1: L1Logistic, c_scores: dict[float, float], X_train, groups, config: ModelConfig,
              y_tune: np.ndarray | None = None) -> dict:
    """The training record of an L1-logistic fitted by ``fit_l1_logistic`` on ``X_train``
    (``groups``: its subjects): C, the tuning AUROC of each C, the non-zero coefficients,
    and the features left out for being held by fewer than ``config.leaf_min_cell`` subjects.

    The tuning AUROCs are None when ``y_tune`` (the tuning labels) holds 1..10 events or
    non-events: an AUROC with the split's published size would give that count back."""
    y_tune = np.asarray([] if y_tune is None else y_tune, bool)
    shown = y_tune.size == 0 or (privacy.suppress(int(y_tune.sum())) is not None
                                 and privacy.suppress(int((~y_tune).sum())) is not None)
    left_out = int((~l1_columns(X_train, groups, config.leaf_min_cell)[1]).sum())
    return {"C": l1.C, "tuning_auroc_by_C": {str(k): v if shown else None for k, v in c_scores.items()},
            "nonzero_coefficients": int((l1.coef != 0).sum()), "min_cell": config.leaf_min_cell, "columns_left_out": left_out}


def fit_l1_logistic(X_train, y_train, X_tune, y_tune, config: ModelConfig,
                    groups=None) -> tuple[L1Logistic, dict[float, float]]:
    """Choose C on the tuning split by AUROC; the scales and columns are the train split's
    (``l1_columns`` at ``config.leaf_min_cell``; ``groups``: the train rows' subjects,
    each row its own when None).

    One liblinear fit per C of ``config.l1_c_grid``, to ``config.l1_tol``. (The fits
    stay in this process, one after another: in worker processes they were no faster on
    a shared 2-core machine, and threads would not be reproducible, as liblinear draws
    its coordinate order from one process-wide random generator.)"""
    scale, Xs_train = _scaled(X_train, groups, config.leaf_min_cell)
    scores, fitted = {}, {}
    for c in config.l1_c_grid:
        coef, intercept = _l1_fit(Xs_train, y_train, c, config.seed, config.l1_tol)
        model = L1Logistic(scale, coef, intercept, c)
        p = model.predict_proba(X_tune)
        scores[c] = float(roc_auc_score(y_tune, p)) if len(np.unique(y_tune)) == 2 else float("nan")
        fitted[c] = model
    best = max(scores, key=lambda c: (np.nan_to_num(scores[c], nan=-1.0), -c))
    return fitted[best], scores


@dataclass(frozen=True)
class PrimaryModel:
    """Forewarn's XGBoost as it predicts: the trees; when they were trained on top of one
    (``ModelConfig.offset``), the L1-logistic whose log-odds they start from; and, when
    blended (``ModelConfig.blend``), the L1-logistic and its weight ``blend``. The trees'
    log-odds for a row are the offset's plus the trees' sum; the model's are
    ``(1 - blend) * trees' + blend * linear's``."""

    clf: xgb.XGBClassifier
    offset: L1Logistic | None = None
    blend: float = 0.0
    linear: L1Logistic | None = None

    def __post_init__(self) -> None:
        if self.blend and self.linear is None:
            raise ValueError(f"PrimaryModel: a blend weight of {self.blend} needs the L1-logistic it blends with (linear=)")

    @property
    def n_features(self) -> int:
        return int(self.clf.n_features_in_)

    def features_used(self) -> np.ndarray:
        """The columns the model's prediction depends on: those some tree splits on, and
        those with a non-zero weight in the L1-logistic it starts from or blends with."""
        booster = self.clf.get_booster()
        names = booster.feature_names
        index = {n: i for i, n in enumerate(names)} if names else None
        used = {index[k] if index else int(k[1:]) for k in booster.get_score(importance_type="weight")}
        for linear in (self.offset, self.linear if self.blend else None):
            if linear is not None:
                used |= set(np.flatnonzero(linear.coef).tolist())
        return np.array(sorted(used), dtype=np.int64)

    def base_margin(self, X) -> np.ndarray | None:
        """Each row's starting log-odds (the offset's), or None when the trees start from the base rate."""
        return None if self.offset is None else self.offset.margin(X)

    def tree_margin(self, X) -> np.ndarray:
        """The trees' log-odds (with their offset) for every row of ``X``."""
        return self.clf.predict(X, output_margin=True, base_margin=self.base_margin(X))

    def margin(self, X) -> np.ndarray:
        """The model's log-odds for every row of ``X``."""
        z = self.tree_margin(X)
        return z if not self.blend else blend_margins(z, self.linear.margin(X), self.blend)

    def probability(self, X) -> np.ndarray:
        """The uncalibrated probability of the outcome for every row of ``X``."""
        if not self.blend:
            return self.clf.predict_proba(X, base_margin=self.base_margin(X))[:, 1]
        return 1.0 / (1.0 + np.exp(-self.margin(X)))


def blend_margins(trees: np.ndarray, linear: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * trees + weight * linear``: the blended log-odds."""
    return (1.0 - weight) * np.asarray(trees, np.float64) + weight * np.asarray(linear, np.float64)


def choose_blend(trees: np.ndarray, linear: np.ndarray, y_tune: np.ndarray, y_train: np.ndarray, config: ModelConfig,
                 subjects: np.ndarray | None = None, *, constant_l1: bool = False,
                 ) -> tuple[float, str | None, dict[str, float], dict | None, dict | None]:
    """The blend weight (``ModelConfig.blend``), from the trees' and the L1's log-odds of
    the rows it is chosen on (``y_tune``: their labels; ``subjects``: their patients, each
    row its own when None): the weight, the objective it was chosen by (None when fixed),
    the score of every weight of ``BLEND_WEIGHTS`` (empty when fixed), the guard
    (``ModelConfig.blend_guard``: its metric, the L1's value of it, each weight's and the
    weights it ruled out) and the rule (``ModelConfig.blend_rule`` one_se: the best
    weight, each allowed weight's tolerance and the weights within it). Guard and rule are
    None when off, when the weight is fixed or when the rows hold one class. When the L1
    scores every row alike (``constant_l1``: it kept no column at its C; or its log-odds
    here are all equal) the weight is 0 and the rule is ``constant_l1``."""
    if config.blend == "none":
        return 0.0, None, {}, None, None
    if not isinstance(config.blend, str):
        return float(config.blend), None, {}, None, None
    name = objective_name(config.search, y_train)
    metrics = {"auroc": roc_auc_score, "auprc": average_precision_score}
    scores = {w: float(metrics[name](y_tune, blend_margins(trees, linear, w))) for w in BLEND_WEIGHTS}
    both = 0 < int(np.sum(y_tune)) < len(y_tune)
    if constant_l1 or np.ptp(np.asarray(linear, np.float64)) == 0:
        # An L1-logistic that kept no column at its C scores every row alike: it ranks
        # nothing. Weight 1 would be a constant model (AUROC 0.5), which the one-standard-
        # error rule, leaning to the L1, can pick on few events (out-of-fold fits of it may
        # still vary): the trees score alone.
        return 0.0, name, {str(w): round(v, 6) for w, v in scores.items()}, None, {"name": "constant_l1", "best": 0.0}
    allowed, guard, rule = list(BLEND_WEIGHTS), None, None
    if config.blend_guard and both:
        other = "auprc" if name == "auroc" else "auroc"
        values = {w: float(metrics[other](y_tune, blend_margins(trees, linear, w))) for w in BLEND_WEIGHTS}
        floor = values[BLEND_WEIGHTS[-1]]  # w = 1: the L1 alone
        if config.blend_guard_floor == "better":
            floor = max(floor, values[BLEND_WEIGHTS[0]])  # or the trees alone
        allowed = [w for w in BLEND_WEIGHTS if values[w] >= floor]
        guard = {"metric": other, "l1": round(values[BLEND_WEIGHTS[-1]], 6),
                 **({"floor": round(floor, 6)} if config.blend_guard_floor == "better" else {}),
                 "by_weight": {str(w): round(v, 6) for w, v in values.items()},
                 "excluded": [str(w) for w in BLEND_WEIGHTS if w not in allowed]}
    best = max(allowed, key=lambda w: (scores[w], -w))
    weight = best
    if config.blend_rule == "one_se" and both:
        tolerance = one_se_tolerance(trees, linear, y_tune, subjects, allowed, best, name, config)
        within = [w for w in allowed if scores[best] - scores[w] <= tolerance[w]]
        weight = max(within)
        rule = {"name": "one_se", "best": best, "tolerance": {str(w): round(t, 6) for w, t in tolerance.items()},
                "within": [str(w) for w in within]}
    return weight, name, {str(w): round(v, 6) for w, v in scores.items()}, guard, rule


def one_se_tolerance(trees, linear, y, subjects, weights, best: float, metric: str, config: ModelConfig) -> dict[float, float]:
    """How far below the ``best`` weight's score each of ``weights`` may score and still
    be chosen (``ModelConfig.blend_rule`` one_se): the standard deviation of the best's
    score minus the weight's (``metric``: auroc or auprc) over ``config.blend_rule_draws``
    patient-level bootstrap resamples of the rows (``subjects``: their patients; each row
    its own when None; resamples of one class are skipped). The best's own tolerance is 0.
    Each weight's rows are sorted once; a resample only reweights them (``ranked_scores``)."""
    y = np.asarray(y).astype(bool)
    subjects = np.arange(y.size) if subjects is None else np.asarray(subjects)
    uniq, row_subject = np.unique(subjects, return_inverse=True)
    rng = np.random.default_rng(config.seed)
    ranked = {}
    for w in weights:
        z = blend_margins(trees, linear, w)
        order = np.argsort(-z, kind="mergesort")
        ranked[w] = (order, np.r_[0, np.flatnonzero(np.diff(z[order])) + 1], y[order])
    gaps: dict[float, list[float]] = {w: [] for w in weights}
    for _ in range(config.blend_rule_draws):
        counts = np.bincount(rng.integers(0, uniq.size, uniq.size), minlength=uniq.size)[row_subject].astype(float)
        events = counts[y].sum()
        if not 0 < events < counts.sum():
            continue
        score = {w: ranked_scores(counts[order] * ys, counts[order] * ~ys, starts)[metric] for w, (order, starts, ys) in ranked.items()}
        for w in weights:
            gaps[w].append(score[best] - score[w])
    return {w: float(np.std(g)) if g else 0.0 for w, g in gaps.items()}


def ranked_scores(positive: np.ndarray, negative: np.ndarray, starts: np.ndarray) -> dict:
    """AUROC and AUPRC (average precision, as scikit-learn defines it) of rows sorted by
    descending score, given each row's weight as an event (``positive``) and as a
    non-event (``negative``) and where each run of tied scores starts (``starts``).
    Equal to ``roc_auc_score`` / ``average_precision_score`` with ``sample_weight``.
    Two-dimensional weights (replicates, rows) give one value per replicate (arrays,
    NaN where a replicate holds one class); one-dimensional weights give floats."""
    tp, fp = np.add.reduceat(positive, starts, axis=-1), np.add.reduceat(negative, starts, axis=-1)
    events, non_events = tp.sum(axis=-1), fp.sum(axis=-1)
    cum_tp, cum_fp = np.cumsum(tp, axis=-1), np.cumsum(fp, axis=-1)
    flagged = cum_tp + cum_fp
    precision = np.divide(cum_tp, flagged, out=np.zeros_like(cum_tp), where=flagged > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (tp * (non_events[..., None] - cum_fp + 0.5 * fp)).sum(axis=-1) / (events * non_events)
        auprc = (tp * precision).sum(axis=-1) / events
    if np.ndim(positive) == 1:
        return {"auroc": float(auroc), "auprc": float(auprc)}
    both = (events > 0) & (non_events > 0)
    return {"auroc": np.where(both, auroc, np.nan), "auprc": np.where(both, auprc, np.nan)}


def fit_blend(primary: PrimaryModel, l1: L1Logistic, X_train, y_train, X_tune, y_tune, groups, config: ModelConfig,
              params: dict | None = None, train_offsets: np.ndarray | None = None,
              tune_groups: np.ndarray | None = None) -> tuple[float, dict]:
    """The blend weight of the fitted ``primary`` trees with ``l1`` (``ModelConfig.blend``)
    and its summary: method, weight, objective, the rows and events it was scored on and the
    score of every weight. For ``crossfit`` the train rows join the tuning rows with
    out-of-fold log-odds (``crossfit_tree_margins`` with the trees' count and ``params``,
    from ``train_offsets`` when they boost from the L1, each fold's fit from offsets nested
    within its other folds; the L1's from ``crossfit_l1_margins``
    at its C, which are those offsets when there are any: the same folds)."""
    trees, linear, y = primary.tree_margin(X_tune), l1.margin(X_tune), np.asarray(y_tune)
    who = patient_codes(None, tune_groups, y.size)
    scored_on = "tuning"
    if config.blend == "crossfit":
        n_trees = int(primary.clf.best_iteration) + 1
        oof_trees = crossfit_tree_margins(X_train, y_train, groups, config, params, n_trees, train_offsets,
                                          None if train_offsets is None else l1.C)
        oof_linear = train_offsets if train_offsets is not None else crossfit_l1_margins(
            X_train, y_train, groups, l1.C, config.cv_folds, config.seed, config.l1_tol, config.leaf_min_cell)
        trees, linear, y = np.r_[oof_trees, trees], np.r_[oof_linear, linear], np.r_[np.asarray(y_train), y]
        who = patient_codes(groups, tune_groups, y.size - len(oof_trees))
        scored_on = "out-of-fold train and tuning"
    weight, objective, scores, guard, rule = choose_blend(trees, linear, y, y_train, config, who,
                                                          constant_l1=not np.any(l1.coef))
    method = config.blend if isinstance(config.blend, str) else "fixed"
    summary = {"method": method, "weight": weight, "objective": objective, "score_by_weight": scores}
    if objective is not None:
        # No events count: with the labelled total the report publishes, the development
        # rows' events would give a held-out split's 1..10 back.
        summary.update(scored_on=scored_on, rows=int(y.size), guard=guard, rule=rule,
                       **({"folds": config.cv_folds} if config.blend == "crossfit" else {}))
    return weight, summary


def patient_codes(train_groups, tune_groups, n_tune: int) -> np.ndarray:
    """One integer per row for the train rows' patients (``train_groups``; none when None)
    then the tuning rows' (``tune_groups``; when None, each tuning row its own patient,
    numbered after every train patient): equal ids, equal codes, whatever their type."""
    train = np.asarray([] if train_groups is None else train_groups)
    if tune_groups is not None:
        return np.unique(np.r_[train, np.asarray(tune_groups)], return_inverse=True)[1]
    codes = np.unique(train, return_inverse=True)[1] if train.size else np.zeros(0, np.int64)
    return np.r_[codes, codes.max(initial=-1) + 1 + np.arange(n_tune)]


def blend_to_json(weight: float, l1: L1Logistic) -> dict:
    return {"weight": weight, "l1_logistic": l1.to_json()}


def load_primary(trained: TrainedModels) -> PrimaryModel:
    """The trained XGBoost of ``trained`` with its offset and blend, where it has them."""
    offset = L1Logistic.from_json(json.loads(trained.offset_path.read_text())) if trained.offset_path.exists() else None
    blend, linear = 0.0, None
    if trained.blend_path.exists():
        data = json.loads(trained.blend_path.read_text())
        blend, linear = float(data["weight"]), L1Logistic.from_json(data["l1_logistic"])
    return PrimaryModel(load_xgboost(trained.xgboost_path), offset, blend, linear)


@dataclass(frozen=True)
class AgeSexLogistic:
    """The age + sex baseline: logistic regression on age (per decade) and female sex."""

    coef: tuple[float, float]
    intercept: float

    @staticmethod
    def indexes(columns: pd.DataFrame) -> tuple[int | None, tuple[int, ...]]:
        """The positions of the age column (None when absent) and the female-sex columns in ``columns``."""
        names = list(columns["name"])
        return (names.index(AGE_COLUMN) if AGE_COLUMN in names else None,
                tuple(names.index(c) for c in FEMALE_COLUMNS if c in names))

    @staticmethod
    def design_at(X: sp.csr_matrix, age_index: int | None, female_indexes: tuple[int, ...]) -> np.ndarray:
        """Age per decade (0 without an age column) and female sex (the largest of its columns), one row per row of ``X``."""
        X = sp.csr_matrix(X)
        age = np.asarray(X[:, age_index].todense()).ravel() / 10 if age_index is not None else np.zeros(X.shape[0])
        female = np.zeros(X.shape[0])
        for col in female_indexes:
            female = np.maximum(female, np.asarray(X[:, col].todense()).ravel())
        return np.column_stack([age, female])

    @classmethod
    def design(cls, X: sp.csr_matrix, columns: pd.DataFrame) -> np.ndarray:
        return cls.design_at(X, *cls.indexes(columns))

    @classmethod
    def fit(cls, X, y, columns) -> AgeSexLogistic:
        return cls.fit_design(cls.design(X, columns), y)

    @classmethod
    def fit_design(cls, design: np.ndarray, y) -> AgeSexLogistic:
        lr = LogisticRegression(C=np.inf).fit(design, y)
        return cls((float(lr.coef_[0, 0]), float(lr.coef_[0, 1])), float(lr.intercept_[0]))

    def margin_of_design(self, design: np.ndarray) -> np.ndarray:
        return design @ np.asarray(self.coef) + self.intercept

    @classmethod
    def from_json(cls, data: dict) -> AgeSexLogistic:
        return cls((float(data["coef_age_per_decade"]), float(data["coef_female"])), float(data["intercept"]))

    def predict_proba(self, X, columns) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.margin_of_design(self.design(X, columns))))

    def to_json(self) -> dict:
        return {"coef_age_per_decade": self.coef[0], "coef_female": self.coef[1], "intercept": self.intercept}


def trainability(matrix: FeatureMatrix, *, min_cell: int = privacy.MIN_CELL) -> str | None:
    """Why ``matrix`` cannot give a trained and evaluated model, or None when it can.

    Train and tuning need both classes; held-out needs both to estimate AUROC. The train
    split needs at least ``min_cell`` subjects with the outcome and without it: trees
    trained on fewer would carry the count (``models.release``).
    """
    rows = pd.read_parquet(matrix.rows_path, columns=[schema.SUBJECT_ID, schema.BOOLEAN_VALUE, schema.SPLIT])
    y = rows[schema.BOOLEAN_VALUE].to_numpy(bool)
    train = (rows[schema.SPLIT] == schema.TRAIN).to_numpy()
    subjects = rows[schema.SUBJECT_ID].to_numpy()
    with_it, without = (int(np.unique(subjects[train & (y == label)]).size) for label in (True, False))
    if min(with_it, without) < min_cell:
        return (
            f"the train split must hold at least {min_cell} subjects with the outcome and {min_cell} without; it has "
            f"{privacy.shown(with_it)} and {privacy.shown(without)}. A model trained on fewer would carry the count "
            "when it leaves the site. Use more people, a longer horizon, a broader outcome, or the network design."
        )
    for name, mask in split_masks(rows).items():
        if mask.sum() == 0 or len(np.unique(y[mask])) < 2:
            return (
                f"the {name} split must hold both positive and negative labels; it has "
                f"{privacy.shown(int(mask.sum()))} rows and {privacy.shown(int(y[mask].sum()))} positives. "
                "Use more people, more prediction times per subject, a longer horizon or a broader outcome."
            )
    return None


def train_models(
    matrix: FeatureMatrix, out_dir: Path, config: ModelConfig, params: dict | None = None, *, client=None
) -> TrainedModels:
    """Fit XGBoost (calibrated on the tuning split), the L1-logistic and the age + sex
    baselines, and write them and their predictions into ``out_dir``.

    With ``client`` (a ``distributed.Client``), the final XGBoost fit runs on its Dask
    cluster with ``xgboost.dask`` (``fit_xgboost_dask``); the saved model, predictions,
    calibration and baselines are computed here as in a local run and written in the
    same files and formats. The hyperparameter search, when enabled, still runs its
    trials locally (they are many small fits), and so do the cross-fitted blend's fold
    fits (``blend: crossfit``); only the final fit goes to Dask.
    """
    out = TrainedModels(Path(out_dir))
    (out.dir / "predictions").mkdir(parents=True, exist_ok=True)
    X, rows, columns = matrix.load()
    y = rows[schema.BOOLEAN_VALUE].to_numpy(bool).astype(np.int8)
    masks = split_masks(rows)
    reason = trainability(matrix, min_cell=config.leaf_min_cell)
    if reason:
        raise ValueError(reason)
    tr, tu = masks[schema.TRAIN], masks[schema.TUNING]
    subjects = rows[schema.SUBJECT_ID].to_numpy()
    with stage("train baselines") as counts:
        lr, c_scores = fit_l1_logistic(X[tr], y[tr], X[tu], y[tu], config, subjects[tr])
        out.l1_path.write_text(json.dumps(lr.to_json()))
        age_sex = AgeSexLogistic.fit(X[tr], y[tr], columns)
        out.age_sex_path.write_text(json.dumps(age_sex.to_json()))
        counts.update(C=lr.C, nonzero_coefficients=int((lr.coef != 0).sum()))
    offset = offset_method(y[tr], config)
    margins = None
    out.offset_path.unlink(missing_ok=True)
    if offset == "l1":
        with stage("xgboost offset (out-of-fold L1-logistic)") as counts:
            margins = offset_margins(X[tr], y[tr], X[tu], subjects[tr], lr, config)
            out.offset_path.write_text(json.dumps(lr.to_json()))
            counts.update(folds=config.cv_folds, C=lr.C)
    trials: list[dict] = []
    if params is None and config.search.trials > 0:

        def fit(trial_params, callbacks, eval_metric):
            return fit_xgboost(X[tr], y[tr], X[tu], y[tu], config, trial_params, callbacks, eval_metric, margins=margins)

        params, trials = search_xgboost(X[tr], y[tr], X[tu], y[tu], fit, config.search,
                                        tune_margin=None if margins is None else margins[1])
    count = tree_count_method(y[tu], config)
    with stage("train xgboost") as counts:
        fit_args = dict(tree_count=count, groups=subjects[tr], margins=margins)
        if client is None:
            clf = fit_xgboost(X[tr], y[tr], X[tu], y[tu], config, params, **fit_args)
        else:
            clf = fit_xgboost_dask(client, X[tr], y[tr], X[tu], y[tu], config, params, **fit_args)
        clf.save_model(out.xgboost_path)
        counts.update(executor="local" if client is None else "dask", rows=int(tr.sum()), positives=int(y[tr].sum()), trees=int(clf.best_iteration) + 1, tree_count=count,
                      offset=offset, scale_pos_weight=round(pos_weight(y[tr], config), 2),
                      rare_outcome_defaults=",".join(sorted(rare_defaults_applied(y[tr], config))) or "none")
    primary = PrimaryModel(clf, lr if offset == "l1" else None)
    out.blend_path.unlink(missing_ok=True)
    with stage("blend with the L1-logistic") as counts:
        weight, blend = fit_blend(primary, lr, X[tr], y[tr], X[tu], y[tu], subjects[tr], config, params,
                                  None if margins is None else margins[0], subjects[tu])
        if weight:
            primary = PrimaryModel(clf, primary.offset, weight, lr)
            out.blend_path.write_text(json.dumps(blend_to_json(weight, lr)))
        counts.update(weight=weight, method=blend["method"], objective=blend["objective"] or "fixed",
                      **({"rows": blend["rows"]} if "rows" in blend else {}),
                      **({"guard_excluded": len(blend["guard"]["excluded"])} if blend.get("guard") else {}),
                      **({"rule": blend["rule"]["name"], "best": blend["rule"]["best"]} if blend.get("rule") else {}))
    raw = primary.probability(X)
    with stage("calibrate") as counts:
        calibrator, brier_by_method = choose_calibrator(raw[tu], y[tu], method=config.calibration, seed=config.seed,
                                                       groups=subjects[tu])
        out.calibration_path.write_text(json.dumps(calibrator.to_json()))
        counts.update(method=calibrator.method)
    threshold = float(y[tr].mean())
    probabilities = {
        PRIMARY: calibrator(raw),
        UNCALIBRATED: raw,
        TREES: 1.0 / (1.0 + np.exp(-primary.tree_margin(X))),
        BASELINE: lr.predict_proba(X),
        AGE_SEX: age_sex.predict_proba(X, columns),
    }
    for model, prob in probabilities.items():
        write_predictions(rows, prob, threshold, out.predictions_path(model))
    size = sample_size(primary, subjects[tr], y[tr])
    warnings = sample_size_warnings(size)
    summary = {
        "threshold": threshold,
        "rows": {name: int(m.sum()) for name, m in masks.items()},
        "positives": {name: int(y[m].sum()) for name, m in masks.items()},
        "xgboost": {"best_iteration": int(clf.best_iteration), "params": xgboost_config(y[tr], config, params).model_dump(),
                    "release": getattr(clf, "release_", None),
                    "tree_count": {"method": count, **({"folds": config.cv_folds} if count == "cv" else {})},
                    "offset": {"method": offset, **({"model": "l1_logistic", "C": lr.C, "folds": config.cv_folds} if offset == "l1" else {})},
                    "blend": blend,
                    "scale_pos_weight": pos_weight(y[tr], config),
                    "rare_outcome_defaults": rare_defaults_applied(y[tr], config)},
        "calibration": {"method": calibrator.method, "tuning_cv_brier": brier_by_method},
        "l1_logistic": l1_record(lr, c_scores, X[tr], subjects[tr], config, y[tu]),
        "age_sex": age_sex.to_json(),
        "features": int(X.shape[1]),
        "sample_size": size,
        "search": {"objective": trials[0]["objective"] if trials else None, "trials": trials, "best_params": params or {}},
        "warnings": warnings,
    }
    out.summary_path.write_text(json.dumps(summary, indent=2))
    return out


MIN_EVENT_SUBJECTS = 100  # the events usually asked of a validation or development set
MIN_EVENTS_PER_FEATURE = 10  # events per predictor usually asked of a regression model


def sample_size(model: PrimaryModel, subjects: np.ndarray, y: np.ndarray) -> dict:
    """The training events against the model's size: train subjects with the outcome,
    the features the fitted model uses (:meth:`PrimaryModel.features_used`) and their
    ratio, the events per used feature."""
    events = int(np.unique(np.asarray(subjects)[np.asarray(y).astype(bool)]).size)
    used = int(model.features_used().size)
    return {"event_subjects": events, "features_used": used,
            "events_per_feature_used": round(events / used, 2) if used else None}


def sample_size_warnings(size: dict) -> list[str]:
    """The warnings a model's training sample deserves: fewer than ``MIN_EVENT_SUBJECTS``
    train subjects with the outcome, or fewer of them than the features the model uses
    (events per used feature below 1, a tenth of ``MIN_EVENTS_PER_FEATURE``)."""
    events, used = size["event_subjects"], size["features_used"]
    out = []
    advice = "train across sites (the network validation design) or add people before relying on this model"
    if events < MIN_EVENT_SUBJECTS:
        out.append(f"only {events} training subjects with the outcome (fewer than {MIN_EVENT_SUBJECTS}): expect "
                   f"optimistic and unstable estimates; {advice}")
    if used and events < used:
        out.append(f"fewer training subjects with the outcome ({events}) than features the model uses ({used}): "
                   f"the model is large for its events (below 1 event per used feature, against the "
                   f"{MIN_EVENTS_PER_FEATURE} usually asked of a regression model), so single features' effects and "
                   f"importances are unstable; {advice}")
    return out


def write_predictions(rows: pd.DataFrame, prob: np.ndarray, threshold: float, path: Path) -> Path:
    table = pa.table(
        {
            schema.SUBJECT_ID: pa.array(rows[schema.SUBJECT_ID].to_numpy(np.int64)),
            schema.PREDICTION_TIME: pa.array(rows[schema.PREDICTION_TIME].to_numpy("datetime64[us]")),
            schema.BOOLEAN_VALUE: pa.array(rows[schema.BOOLEAN_VALUE].to_numpy(bool)),
            schema.PREDICTED_BOOLEAN_VALUE: pa.array(prob >= threshold),
            schema.PREDICTED_BOOLEAN_PROBABILITY: pa.array(prob.astype(np.float64)),
        }
    )
    table = schema.align(table, schema.PREDICTION_SCHEMA, what="predictions")
    table = table.append_column(schema.SPLIT, pa.array(rows[schema.SPLIT].astype(str).to_numpy()))
    tmp = path.with_name(path.name + ".partial")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def load_xgboost(path: Path) -> xgb.XGBClassifier:
    clf = xgb.XGBClassifier()
    clf.load_model(path)
    return clf
