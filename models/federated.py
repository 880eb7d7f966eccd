"""Training one model across sites without moving rows.

XGBoost's federated plugin is gone from its wheels (``DESIGN.md`` section 8), so the
trees are trained by cyclic boosting: the model visits the sites in turn, and each site
adds ``rounds_per_visit`` trees fitted to its own rows' gradients under the ensemble it
received (``xgb.train(..., xgb_model=...)``), then hands the model on. What crosses a
site's boundary:

- the model itself (trees, as XGBoost's UBJSON bytes), as it does when a model is
  shipped for external validation;
- sums over a split of at least ``MIN_ROWS`` rows, events and non-events: the tuning
  rows' log-loss for early stopping, the gradient and Hessian of a two-parameter Platt
  scaling, its cross-validated Brier score with the sum and sum of squares of its
  per-subject differences from no calibration's, and the label counts (whose pooled
  prevalence sets the rare-outcome settings and the starting log-odds).

Rows, subject ids, prediction times and per-row scores never do: ``SiteRows`` holds
them and answers only through those methods. The coordinator (``train_federated``)
sees the messages and nothing else.

The tree count is chosen by early stopping on the pooled tuning log-loss (the sum over
sites divided by the pooled row count), checked after every visit; the calibration is
a Platt scaling fitted by Newton steps on the summed gradients, which is the pooled
maximum-likelihood fit, kept only when its cross-validated pooled Brier score beats no
calibration's by more than one standard error (``models.calibration.choose_calibrator``
makes the same choice on one site's rows).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import xgboost as xgb
from scipy.special import expit

from forewarn.features.featurize import FeatureMatrix
from forewarn.models.calibration import EPS, Calibrator
from forewarn.models.release import ReleaseSettings, release_trees
from forewarn.models.train import (
    AGE_SEX,
    BASELINE,
    PRIMARY,
    UNCALIBRATED,
    AgeSexLogistic,
    ModelConfig,
    TrainedModels,
    fit_l1_logistic,
    l1_record,
    pos_weight,
    rare_defaults_applied,
    split_masks,
    write_predictions,
    xgboost_config,
)
from forewarn.records import schema
from forewarn.records.progress import stage

MIN_ROWS = 11


def shared_columns(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The network's feature columns: every column that any site's own vocabulary chose
    (each from codes held by at least 11 of that site's train subjects), once, sorted by
    name. Each site then featurizes its rows in these columns (``featurize(columns=)``),
    so that one model reads every site's matrix the same way."""
    if not tables:
        raise ValueError("shared_columns needs the columns of at least one site; got none.")
    keep = ["name", "code", "agg", "window", "description"]
    out = pd.concat([t[[c for c in keep if c in t.columns]] for t in tables], ignore_index=True)
    return out.drop_duplicates("name").sort_values("name", kind="stable").reset_index(drop=True)


def _logloss_sum(y: np.ndarray, margin: np.ndarray) -> float:
    # -log sigmoid(z) for events, -log(1 - sigmoid(z)) for non-events, without overflow.
    return float(np.sum(np.logaddexp(0.0, np.where(y, -margin, margin))))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


@dataclass
class SiteRows:
    """One site's feature matrix, kept at the site. Its methods take a model (or two
    Platt parameters) and return a model or a sum over at least ``MIN_ROWS`` rows."""

    name: str
    matrix: FeatureMatrix
    threads: int = 1
    _X: sp.csr_matrix = field(init=False, repr=False)
    _y: np.ndarray = field(init=False, repr=False)
    _masks: dict[str, np.ndarray] = field(init=False, repr=False)
    _subjects: np.ndarray = field(init=False, repr=False)
    _dtrain: xgb.DMatrix | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        X, rows, _ = self.matrix.load()
        self._X, self._y = X, rows[schema.BOOLEAN_VALUE].to_numpy(bool)
        self._masks = split_masks(rows)
        self._subjects = rows[schema.SUBJECT_ID].to_numpy()
        if not self._y[self._masks[schema.TRAIN]].any():
            raise ValueError(f"site {self.name!r}: its train split has no events, so it has nothing to teach the network's "
                             "model; leave it out of the federation for this task.")

    def _enough(self, split: str, keep: np.ndarray | None = None) -> bool:
        y = self._y[self._masks[split]]
        y = y if keep is None else y[keep]
        return min(int(y.sum()), int((~y).sum())) >= MIN_ROWS

    @property
    def can_tune(self) -> bool:
        """Whether each calibration fold of the tuning split (``_fold``) has ``MIN_ROWS``
        events and non-events. A sum over tuning rows gives their event count away (the
        first trees' log-loss is a function of it), so only such a site reports tuning
        sums; the others still add trees."""
        return all(self._enough(schema.TUNING, self._fold(f)) for f in (0, 1))

    @property
    def columns(self) -> pd.DataFrame:
        return pd.read_parquet(self.matrix.columns_path)

    def label_counts(self) -> dict[str, int] | None:
        """Rows and events of the train split, or None (nothing leaves) when its events or
        non-events number fewer than ``MIN_ROWS``."""
        y = self._y[self._masks[schema.TRAIN]]
        return {"rows": int(y.size), "events": int(y.sum())} if self._enough(schema.TRAIN) else None

    @property
    def can_boost(self) -> bool:
        """Whether the train split holds ``MIN_ROWS`` subjects with the outcome and without
        it: trees fitted on fewer could not leave the site (``models.release``)."""
        m = self._masks[schema.TRAIN]
        y, s = self._y[m], self._subjects[m]
        return min(np.unique(s[y]).size, np.unique(s[~y]).size) >= MIN_ROWS

    def boost(self, model: bytes | None, rounds: int, params: dict, seed: int, *, min_cell: int = MIN_ROWS) -> bytes:
        """Add ``rounds`` trees fitted to this site's train rows under ``model`` (None: the
        first trees), released (``models.release``): every leaf of the new trees holds 0 or
        at least ``min_cell`` of this site's train subjects with the outcome and without it,
        its value recomputed on all of them. The trees before are another site's, kept."""
        m = self._masks[schema.TRAIN]
        if self._dtrain is None:
            self._dtrain = xgb.DMatrix(self._X[m], label=self._y[m].astype(np.float32), nthread=self.threads)
        booster = None if model is None else xgb.Booster(model_file=bytearray(model))
        before = 0 if booster is None else booster.num_boosted_rounds() * int(params.get("num_parallel_tree", 1))
        booster = xgb.train({**params, "seed": seed, "nthread": self.threads}, self._dtrain, num_boost_round=rounds,
                            xgb_model=booster)
        if min_cell > 1:
            booster, _ = release_trees(booster, self._X[m], self._y[m], self._subjects[m], ReleaseSettings.from_params(params),
                                       first_tree=before, min_cell=min_cell)
        return bytes(booster.save_raw("ubj"))

    def _margin(self, model: bytes, split: str) -> np.ndarray:
        booster = xgb.Booster(model_file=bytearray(model))
        return booster.predict(xgb.DMatrix(self._X[self._masks[split]], nthread=self.threads), output_margin=True)

    def _tuning(self) -> None:
        if not self.can_tune:
            raise PermissionError(f"site {self.name!r} reports no tuning sums: its tuning split has fewer than {MIN_ROWS} "
                                  "events or non-events.")

    def tuning_logloss(self, model: bytes) -> tuple[float, int]:
        """The summed log-loss of ``model`` over this site's tuning rows, and their number."""
        self._tuning()
        y = self._y[self._masks[schema.TUNING]]
        return _logloss_sum(y, self._margin(model, schema.TUNING)), int(y.size)

    def _fold(self, fold: int | None) -> np.ndarray:
        """Tuning rows of a calibration fold: subjects by the parity of their id (None: all)."""
        s = self._subjects[self._masks[schema.TUNING]]
        return np.ones(s.size, bool) if fold is None else (s % 2 == fold)

    def platt_sums(self, model: bytes, a: float, b: float, fold: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Gradient and Hessian of the log-loss of ``sigmoid(a + b * z)`` (z: the model's log-odds)
        over this site's tuning rows of ``fold``."""
        self._tuning()
        keep = self._fold(fold)
        z = _logit(1.0 / (1.0 + np.exp(-self._margin(model, schema.TUNING)[keep].astype(np.float64))))
        y = self._y[self._masks[schema.TUNING]][keep]
        p = expit(a + b * z)
        design = np.column_stack([np.ones_like(z), z])
        grad = design.T @ (p - y)
        hess = (design * (p * (1 - p))[:, None]).T @ design
        return grad, hess

    def brier_sums(self, model: bytes, calibrator: Calibrator, fold: int | None = None,
                   reference: Calibrator | None = None) -> tuple[float, ...]:
        """The summed squared error of ``calibrator`` applied to ``model`` over this site's
        tuning rows of ``fold``, and their number; with ``reference``, also the sum and the
        sum of squares over the fold's subjects of each subject's summed difference from
        ``reference``'s squared errors, and the number of subjects (for the standard
        error of the difference: ``calibration_choice``)."""
        self._tuning()
        keep = self._fold(fold)
        raw = 1.0 / (1.0 + np.exp(-self._margin(model, schema.TUNING)[keep].astype(np.float64)))
        y = self._y[self._masks[schema.TUNING]][keep]
        errors = (calibrator(raw) - y) ** 2
        if reference is None:
            return float(np.sum(errors)), int(y.size)
        _, subject = np.unique(self._subjects[self._masks[schema.TUNING]][keep], return_inverse=True)
        per_subject = np.bincount(subject, weights=errors - (reference(raw) - y) ** 2)
        return (float(np.sum(errors)), int(y.size), float(per_subject.sum()), float(np.sum(per_subject ** 2)),
                int(per_subject.size))

    def write_trained(self, model: FederatedModel, out_dir: Path, config: ModelConfig, *, baselines: bool = True) -> TrainedModels:
        """The network's model as this site's ``TrainedModels`` folder, beside this site's own
        L1-logistic and age + sex baselines (fitted here, on this site's train rows), with
        predictions for every row: what ``evaluation.evaluate_and_explain`` reads, so the
        site's report and metrics come out as for a model trained at the site. Without
        ``baselines``, only the network model and its predictions (what
        ``evaluation.validation.external_validation`` reads)."""
        out = TrainedModels(Path(out_dir))
        (out.dir / "predictions").mkdir(parents=True, exist_ok=True)
        X, y, m = self._X, self._y.astype(np.int8), self._masks
        tr, tu = m[schema.TRAIN], m[schema.TUNING]
        rows, columns = pd.read_parquet(self.matrix.rows_path), self.columns
        booster = xgb.Booster(model_file=bytearray(model.trees))
        booster.set_attr(best_iteration=str(model.n_trees - 1))
        booster.save_model(out.xgboost_path)
        out.calibration_path.write_text(json.dumps(model.calibrator.to_json()))
        out.offset_path.unlink(missing_ok=True)
        out.blend_path.unlink(missing_ok=True)
        raw = booster.predict(xgb.DMatrix(X, nthread=self.threads))
        threshold = float(y[tr].mean())
        probabilities = {PRIMARY: model.calibrator(raw), UNCALIBRATED: raw}
        local: dict = {}
        if baselines:
            subjects = rows[schema.SUBJECT_ID].to_numpy()[tr]
            lr, c_scores = fit_l1_logistic(X[tr], y[tr], X[tu], y[tu], config, subjects)
            out.l1_path.write_text(json.dumps(lr.to_json()))
            age_sex = AgeSexLogistic.fit(X[tr], y[tr], columns)
            out.age_sex_path.write_text(json.dumps(age_sex.to_json()))
            probabilities |= {BASELINE: lr.predict_proba(X), AGE_SEX: age_sex.predict_proba(X, columns)}
            local = {"l1_logistic": l1_record(lr, c_scores, X[tr], subjects, config, y[tu]),
                     "age_sex": age_sex.to_json()}
        for name, prob in probabilities.items():
            write_predictions(rows, prob, threshold, out.predictions_path(name))
        summary = {
            "threshold": threshold,
            "rows": {name: int(mask.sum()) for name, mask in m.items()},
            "positives": {name: int(y[mask].sum()) for name, mask in m.items()},
            "xgboost": {"best_iteration": model.n_trees - 1, "params": model.summary["xgboost"],
                        "tree_count": {"method": "federated"}, "offset": {"method": "none"},
                        "blend": {"weight": 0.0, "method": "none", "objective": None},
                        "scale_pos_weight": model.summary["scale_pos_weight"],
                        "rare_outcome_defaults": model.summary["rare_outcome_defaults"]},
            "calibration": {"method": model.calibrator.method, "tuning_cv_brier": model.summary["calibration_cv_brier"]},
            **local,
            "features": int(X.shape[1]),
            "search": {"objective": None, "trials": [], "best_params": {}},
            "warnings": [],
            "federated": model.summary,
        }
        out.summary_path.write_text(json.dumps(summary, indent=2))
        return out


@dataclass(frozen=True)
class FederatedModel:
    """The network's model: the trees (XGBoost UBJSON), how many of them it uses, its
    calibration and how it was trained (no site's rows or per-row values)."""

    trees: bytes
    n_trees: int
    calibrator: Calibrator
    summary: dict

    def booster(self) -> xgb.Booster:
        return xgb.Booster(model_file=bytearray(self.trees))

    def save(self, folder: Path) -> None:
        """``trees.ubj`` (XGBoost's own format) and ``network.json`` (tree count, calibrator, summary)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "trees.ubj").write_bytes(self.trees)
        (folder / "network.json").write_text(json.dumps(
            {"n_trees": self.n_trees, "calibrator": self.calibrator.to_json(), "summary": self.summary}, indent=1))

    @classmethod
    def load(cls, folder: Path) -> FederatedModel:
        folder = Path(folder)
        data = json.loads((folder / "network.json").read_text())
        return cls((folder / "trees.ubj").read_bytes(), int(data["n_trees"]), Calibrator.from_json(data["calibrator"]),
                   data["summary"])


def _pooled_params(sites: list[SiteRows], config: ModelConfig) -> tuple[dict, dict]:
    counts = [c for c in (s.label_counts() for s in sites) if c is not None]
    if not counts:
        raise ValueError(f"no site of {[s.name for s in sites]} has {MIN_ROWS} train events and non-events, so none can "
                         "share its label counts; the network's prevalence is unknown. Add sites or people.")
    rows, events = sum(c["rows"] for c in counts), sum(c["events"] for c in counts)
    # The rare-outcome settings and class weighting read only the label counts.
    pooled_y = np.r_[np.ones(events, np.int8), np.zeros(rows - events, np.int8)]
    p = xgboost_config(pooled_y, config)
    params = {
        "objective": "binary:logistic", "tree_method": "hist", "eta": p.learning_rate, "max_depth": p.max_depth,
        "min_child_weight": p.min_child_weight, "subsample": p.subsample, "colsample_bytree": p.colsample_bytree,
        "colsample_bynode": p.colsample_bynode, "num_parallel_tree": p.num_parallel_tree, "lambda": p.reg_lambda,
        "max_delta_step": p.max_delta_step, "scale_pos_weight": pos_weight(pooled_y, config),
        "base_score": events / rows,
    }
    info = {"xgboost": p.model_dump(), "scale_pos_weight": params["scale_pos_weight"],
            "count_sites": [s.name for s in sites if s.label_counts() is not None],
            # summed over the sites that shared them (each 11+ events and non-events)
            "train_rows": rows, "train_events": events,
            "rare_outcome_defaults": rare_defaults_applied(pooled_y, config)}
    return params, info


def _platt(sites: list[SiteRows], model: bytes, fold: int | None, iterations: int = 50) -> Calibrator:
    """Newton's method on the summed gradients and Hessians: the pooled maximum-likelihood
    Platt scaling, as ``LogisticRegression(C=inf)`` on the pooled rows would fit it."""
    theta = np.array([0.0, 1.0])
    for _ in range(iterations):
        sums = [s.platt_sums(model, theta[0], theta[1], fold) for s in sites]
        grad, hess = sum(g for g, _ in sums), sum(h for _, h in sums)
        step = np.linalg.solve(hess + 1e-12 * np.eye(2), grad)
        theta = theta - step
        if np.max(np.abs(step)) < 1e-10:
            break
    return Calibrator("sigmoid", a=float(theta[0]), b=float(theta[1]))


def calibration_choice(sites: list[SiteRows], model: bytes, folds: dict[int, Calibrator]) -> tuple[dict[str, float], bool]:
    """The pooled cross-validated Brier scores of no calibrator and of the Platt scaling
    fitted on the other fold (``folds``), and whether the sigmoid beats none by more than
    one standard error of their pooled per-subject difference: the rule
    ``models.calibration.simplest_within_one_se`` applies at one site, on sums each site
    computes over its own subjects (no row crosses)."""
    none = Calibrator("none")
    sig, none_total, n, d_sum, d_squares, subjects = 0.0, 0.0, 0, 0.0, 0.0, 0
    for fold, calibrator in folds.items():
        for s in sites:
            b, k, d, d2, m = s.brier_sums(model, calibrator, fold, none)
            sig, n, d_sum, d_squares, subjects = sig + b, n + k, d_sum + d, d_squares + d2, subjects + m
            none_total += b - d
    cv = {"none": none_total / n, "sigmoid": sig / n}
    # per-subject differences scaled by subjects / rows, so that their mean is the rows' mean difference
    scale = subjects / n
    var = max(d_squares - d_sum ** 2 / subjects, 0.0) / (subjects - 1) * scale ** 2 if subjects > 1 else 0.0
    return cv, -d_sum / n > float(np.sqrt(var / subjects))


def untrainable(sites: list[SiteRows], *, columns: bool = True) -> str | None:
    """Why no network model can be trained on ``sites``, or None when it can (``columns``
    False: whatever their columns, as on the sites' own matrices before the shared ones)."""
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        return f"site names must be unique; got {names}."
    first = sites[0].columns["name"].tolist()
    for s in sites[1:] if columns else []:
        if s.columns["name"].tolist() != first:
            widths = {s.name: int(s.columns.shape[0]) for s in sites}
            return (f"site {s.name!r} has other feature columns than site {sites[0].name!r} ({widths}); featurize every "
                    "site in the network's shared columns (models.federated.shared_columns) first.")
    if not any(s.can_boost for s in sites):
        return (f"no site of {names} has {MIN_ROWS} train subjects with the outcome and {MIN_ROWS} without, so none can "
                f"fit trees that may leave it (each leaf must hold 0 or {MIN_ROWS} of either). Add sites or people.")
    if not any(s.can_tune for s in sites):
        return (f"no site of {names} has {MIN_ROWS} tuning events and non-events in each half of its tuning subjects "
                "(the calibration folds), so the tree count and the calibration cannot be chosen without a count below "
                f"{MIN_ROWS} leaving a site. Add sites or people.")
    return None


def train_federated(sites: list[SiteRows], config: ModelConfig, *, rounds_per_visit: int = 10) -> FederatedModel:
    """One XGBoost model across ``sites`` by cyclic boosting, early-stopped on the pooled
    tuning log-loss, then calibrated with a pooled Platt scaling when that lowers the
    cross-validated pooled Brier score by more than one standard error
    (``calibration_choice``; see the module's docstring for what crosses).
    ``sites`` may be ``SiteRows`` or ``models.site_process.SiteProcess`` (each site in a
    process of its own): the same calls, the same model."""
    if not sites:
        raise ValueError("train_federated needs at least one site; got none.")
    names = [s.name for s in sites]
    reason = untrainable(sites)
    if reason:
        raise ValueError(reason)
    if rounds_per_visit < 1:
        raise ValueError(f"rounds_per_visit must be at least 1; got {rounds_per_visit!r}.")
    params, info = _pooled_params(sites, config)
    tuners = [s for s in sites if s.can_tune]
    boosters = [s for s in sites if s.can_boost]  # the others still tune and evaluate
    max_trees, patience = info["xgboost"]["n_estimators"], info["xgboost"]["early_stopping_rounds"]
    model: bytes | None = None
    best = (np.inf, 0, b"")
    history: list[dict] = []
    visit = 0
    with stage(f"train across {len(sites)} sites (cyclic boosting)") as counts:
        trees = 0
        while trees < max_trees and trees - best[1] < patience:
            site = boosters[visit % len(boosters)]
            rounds = min(rounds_per_visit, max_trees - trees)
            model = site.boost(model, rounds, params, seed=config.seed + visit, min_cell=config.leaf_min_cell)
            trees += rounds
            visit += 1
            sums = [s.tuning_logloss(model) for s in tuners]
            loss = sum(v for v, _ in sums) / sum(n for _, n in sums)
            history.append({"trees": trees, "site": site.name, "tuning_logloss": round(loss, 6)})
            if loss < best[0]:
                best = (loss, trees, model)
        n_trees = best[1]
        counts.update(visits=visit, trees=n_trees, tuning_logloss=round(best[0], 5))
    booster = xgb.Booster(model_file=bytearray(best[2]))
    kept = bytes(booster[:n_trees].save_raw("ubj"))
    with stage("calibrate across sites (Platt)") as counts:
        folds = {0: _platt(tuners, kept, 1), 1: _platt(tuners, kept, 0)}  # fit on one fold, score the other
        cv, sigmoid_gain = calibration_choice(tuners, kept, folds)
        calibrator = _platt(tuners, kept, None)
        if not (sigmoid_gain and calibrator.b > 0):
            calibrator = Calibrator("none")
        counts.update(method=calibrator.method)
    # Sites that answer from processes of their own (``models.site_process``) keep a record
    # of every answer that left them.
    answers = {s.name: s.summary() for s in sites if hasattr(s, "summary")}
    summary = info | {
        "boundary": {"kind": "process" if answers else "in-process", "answers": answers},
        "sites": names, "tuning_sites": [s.name for s in tuners], "boosting_sites": [s.name for s in boosters], "rounds_per_visit": rounds_per_visit, "visits": visit, "trees": n_trees,
        "pooled_tuning_logloss": round(best[0], 6), "history": history,
        "calibration_cv_brier": {k: round(v, 6) for k, v in cv.items()},
    }
    return FederatedModel(kept, n_trees, calibrator, summary)
