"""Evaluate trained models on the held-out split, explain the primary model, build the report.

Everything here returns or writes plain records (``metrics.json``, ``shap.npz``,
``report.html``); the flow's MLflow adapter logs them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, model_validator

from forewarn.evaluation import clinical, metrics, plots
from forewarn.evaluation.characteristics import characteristics
from forewarn.evaluation.explain import Explanations, explain
from forewarn.evaluation.learning_curve import LearningCurveConfig, learning_curve
from forewarn.features.featurize import YEAR_US, FeatureMatrix
from forewarn.models.train import (
    AGE_SEX,
    BASELINE,
    MODELS,
    PRIMARY,
    TREES,
    UNCALIBRATED,
    L1Logistic,
    ModelConfig,
    TrainedModels,
    load_primary,
    load_xgboost,
)
from forewarn.records import privacy, schema
from forewarn.records.progress import stage

MODEL_LABELS = {
    PRIMARY: "XGBoost (calibrated)",
    BASELINE: "L1-logistic regression",
    AGE_SEX: "Age + sex logistic",
    UNCALIBRATED: "XGBoost (uncalibrated)",
    TREES: "XGBoost trees alone (not registered)",
}


def model_labels(training: dict | None = None) -> dict[str, str]:
    """The models' names in tables and figures, the registered model named for what it
    scores with (``training``: its training summary): XGBoost, its blend with the
    L1-logistic, or at blend weight 1 the L1-logistic's ranking; and "no calibrator" when
    none beat its raw risks on the tuning split (calibration method ``none``)."""
    labels = dict(MODEL_LABELS)
    if not training:
        return labels
    weight = float(((training.get("xgboost") or {}).get("blend") or {}).get("weight") or 0.0)
    base = "XGBoost" if weight == 0 else "XGBoost + L1 blend" if weight < 1 else "Blend at weight 1 (L1-logistic)"
    none = (training.get("calibration") or {}).get("method") == "none"
    labels[PRIMARY] = f"{base} ({'no calibrator' if none else 'calibrated'})"
    labels[UNCALIBRATED] = f"{base} (uncalibrated)"
    return labels


class EvaluationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap: int = Field(
        1000, ge=10,
        description="patient-bootstrap draws of every interval (the promotion rule's AUROC lower bound among them: "
        "with 200 its 2.5th percentile rests on the 5th lowest draw, and moved by 0.005-0.007 on the demo's T2D cells; "
        "1,000 cost the evaluation no measurable time there)",
    )
    seed: int = 0
    shap_rows: int = Field(2000, ge=10)
    thresholds: list[float] = Field(
        default=list(clinical.DEFAULT_THRESHOLDS), min_length=1,
        description="risk thresholds of the threshold table (each in [0, 1])",
    )
    alert_budgets: list[float] = Field(
        default=[0.01, 0.05, 0.10], min_length=1,
        description="alert budgets of the threshold table: the share of prediction times flagged (each in (0, 1])",
    )
    net_benefit_thresholds: list[float] = Field(
        default=list(clinical.DEFAULT_NET_BENEFIT_THRESHOLDS), min_length=1,
        description="threshold probabilities of the decision curve (each in (0, 1))",
    )
    operating_budget: float = Field(
        0.05, description="the alert budget whose threshold sets the operating point of the lead times and subgroups"
    )
    characteristics_top: int = Field(
        10, ge=0, le=50,
        description="how many of the model's most important predictors the participants' characteristics table shows",
    )
    learning_curve: LearningCurveConfig = Field(
        default_factory=LearningCurveConfig,
        description="refit the model's learners on shares of the train subjects and score them on the held-out split "
        "(off unless fractions are given: each share is two more fits a task and site)",
    )

    @model_validator(mode="after")
    def _levels(self) -> EvaluationConfig:
        bad = [t for t in self.thresholds if not 0 <= t <= 1] + [r for r in self.alert_budgets if not 0 < r <= 1]
        if bad:
            raise ValueError(f"thresholds must lie in [0, 1] and alert_budgets in (0, 1]; got {bad}.")
        bad = [t for t in self.net_benefit_thresholds if not 0 < t < 1]
        if bad:
            raise ValueError(f"net_benefit_thresholds must lie in (0, 1) (open: net benefit weighs by t / (1 - t)); got {bad}.")
        if self.operating_budget not in self.alert_budgets:
            raise ValueError(
                f"operating_budget must be one of alert_budgets {self.alert_budgets}; got {self.operating_budget}. "
                "Add it to alert_budgets or choose one of them."
            )
        return self


@dataclass(frozen=True)
class Evaluation:
    dir: Path

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def explanations(self) -> Explanations:
        return Explanations(self.dir / "shap")

    def figure(self, name: str) -> Path:
        return self.dir / "figures" / f"{name}.png"

    def load_metrics(self) -> dict:
        return json.loads(self.metrics_path.read_text())


FIGURES = ("roc_pr", "calibration", "decision_curve", "shap_bar", "shap_beeswarm")
DEPENDENCE_FIGURES = 3
WATERFALL_FIGURES = 3


def split_frame(trained: TrainedModels, model: str, split: str) -> pd.DataFrame:
    """``model``'s predictions on the rows of ``split``."""
    pred = pd.read_parquet(trained.predictions_path(model))
    return pred[pred[schema.SPLIT] == split].reset_index(drop=True)


def held_out_frame(trained: TrainedModels, model: str) -> pd.DataFrame:
    return split_frame(trained, model, schema.HELD_OUT)


def held_out_metrics(trained: TrainedModels, config: EvaluationConfig) -> dict:
    """The primary model's held-out record as :func:`evaluate_and_explain` writes it
    (``held_out["xgboost"]``: discrimination with patient-bootstrap CIs and the calibration
    statistics) without the rest of the report's evaluation (utility, subgroups, SHAP,
    figures): for a design that logs only these numbers (temporal validation)."""
    held = held_out_frame(trained, PRIMARY)
    y = held[schema.BOOLEAN_VALUE].to_numpy(bool)
    p = held[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float)
    record = metrics.evaluate(y, p, held[schema.SUBJECT_ID].to_numpy(), n_boot=config.bootstrap, seed=config.seed)
    return json_safe(record | model_based(record, p) | risk_spread(p) | _without_counts(clinical.calibration_stats(y, p)))


def paired_with_primary(held_out: dict, model: str, scores: dict, subjects: np.ndarray, *, n_boot: int,
                        seed: int) -> dict | None:
    """The registered model's AUROC and AUPRC minus ``model``'s on the same held-out rows,
    with paired patient-bootstrap 95% intervals (``metrics.paired_differences``): whether
    the registered model beats a baseline, not only where their own intervals lie. None
    where either's metrics are withheld (1..10 events or non-events) or the two were not
    scored on the same rows."""
    (y, p), (y_model, p_model) = scores[PRIMARY], scores[model]
    if held_out[PRIMARY].get("withheld") or held_out[model].get("withheld") or not np.array_equal(y, y_model) \
            or n_boot < 1:
        return None
    return metrics.paired_differences(y, p, p_model, subjects, n_boot=n_boot, seed=seed)


def risk_spread(p: np.ndarray) -> dict:
    """``constant_risk``: every row was given the same risk, so the model ranks no one
    (``models.promotion.decide`` never promotes it). A yes or no about the model's
    outputs, not the labels: it gives no count back, so it is shipped even where the
    metrics are withheld."""
    return {"constant_risk": bool(np.unique(np.asarray(p, float)).size <= 1)}


def model_based(record: dict, p: np.ndarray) -> dict:
    """``model_based_auroc`` beside a record's AUROC (``metrics.model_based_concordance``:
    the AUROC the rows' case mix allows if the risks were right), withheld with it."""
    return {"model_based_auroc": None if record.get("withheld") else metrics.model_based_concordance(p)}


def _without_counts(stats: dict) -> dict:
    """Calibration statistics to merge into a discrimination record, whose own ``n`` and
    ``events`` (``metrics.evaluate``'s, withheld by its rules) stay as they are."""
    return {k: v for k, v in stats.items() if k not in ("n", "events")}


SEX_CODES = (("Gender//F", "F"), ("Gender//M", "M"))  # static codes; M over F


def demographics(X, columns: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(age in years, sex as 'F'/'M'/None) per row, from the age and gender columns."""
    names = {n: i for i, n in enumerate(columns["name"])}
    age = np.asarray(X[:, names["AGE/years/at_prediction/t"]].todense()).ravel() if "AGE/years/at_prediction/t" in names else np.full(X.shape[0], np.nan)
    sex = np.full(X.shape[0], None, dtype=object)
    for code, label in SEX_CODES:
        col = names.get(f"{code}/static/present/static")
        if col is not None:
            sex[np.asarray(X[:, col].todense()).ravel() > 0] = label
    return age, sex


AUDIT_GROUPS = (("race", schema.RACE_VOCABULARY), ("ethnicity", schema.ETHNICITY_VOCABULARY))
MULTIPLE = "Multiple"  # a person with two or more distinct codes of the group's vocabulary
OTHER = "Other"  # a site's own code held by fewer than 11 people: its name does not leave the site


def audit_levels(events_dir: Path, subjects=None) -> pd.DataFrame:
    """Each subject's race and ethnicity, the fairness audit's subgroups, from the static
    codes of the Race and Ethnicity vocabularies (``Race//5``; the vocabulary matched
    ignoring case, so a MEDS source's ``RACE//...`` counts too), or, for a person with
    none of a vocabulary's static codes, from its codes at the latest time one was
    recorded (a MEDS source that records race with each admission, as MIMIC-IV's
    admissions table does); a value that says nothing (``RACE//UNKNOWN``, "PATIENT
    DECLINED TO ANSWER": ``schema.AUDIT_UNRECORDED``) is not a record: one row per subject of
    ``subjects`` (all with events when None), ``subject_id``, ``race``, ``ethnicity``. A
    level is the code's name (``schema.AUDIT_LEVELS``: "White", "Hispanic or Latino"), a
    code of its own otherwise (``RACE//WHITE``: "WHITE"), or "Other" where fewer than 11
    people of the site hold it, since level names leave the site with the subgroup tables
    as column names do with a model; "Multiple" where a person has two or more; None where
    none is recorded. Site-local: the subgroup tables publish only their levels' aggregates."""
    events = f"read_parquet('{Path(events_dir) / '*.parquet'}')"
    cases = " ".join(f"WHEN '{code}' THEN '{name}'" for code, name in schema.AUDIT_LEVELS.items())
    picks = ", ".join(
        f"CASE WHEN count(DISTINCT code) FILTER (WHERE upper(split_part(code, '//', 1)) = '{vocab.upper()}') > 1 "
        f"THEN '{MULTIPLE}' ELSE min(CASE code {cases} ELSE split_part(code, '//', 2) END) "
        f"FILTER (WHERE upper(split_part(code, '//', 1)) = '{vocab.upper()}') END AS {group}"
        for group, vocab in AUDIT_GROUPS)
    vocabs = ", ".join(f"'{vocab.upper()}'" for _, vocab in AUDIT_GROUPS)
    # per person and vocabulary: the static rows where there are any, else the latest time's
    unrecorded = ", ".join(f"'{v}'" for v in sorted(schema.AUDIT_UNRECORDED))
    sql = f"""WITH r AS (SELECT subject_id, time, code, upper(split_part(code, '//', 1)) AS vocab FROM {events}
                        WHERE upper(split_part(code, '//', 1)) IN ({vocabs})
                          AND upper(trim(split_part(code, '//', 2))) NOT IN ({unrecorded})),
              chosen AS (SELECT * FROM r WINDOW w AS (PARTITION BY subject_id, vocab)
                         QUALIFY CASE WHEN bool_or(time IS NULL) OVER w THEN time IS NULL
                                      ELSE time = max(time) OVER w END)
              SELECT CAST(subject_id AS BIGINT) AS subject_id, {picks} FROM chosen GROUP BY 1"""
    with duckdb.connect() as con:
        found = con.sql(sql).df()
    standard = {*schema.AUDIT_LEVELS.values(), MULTIPLE}
    for group, _ in AUDIT_GROUPS:
        held = found[group].value_counts()
        rare = [level for level, n in held.items() if level not in standard and n < privacy.MIN_CELL]
        found.loc[found[group].isin(rare), group] = OTHER
    ids = found["subject_id"] if subjects is None else pd.Series(np.unique(np.asarray(subjects, np.int64)), name="subject_id")
    out = pd.DataFrame({"subject_id": ids.to_numpy(np.int64)}).merge(found, on="subject_id", how="left")
    for group, _ in AUDIT_GROUPS:
        out[group] = out[group].astype(object).where(out[group].notna(), None)
    return out.sort_values("subject_id", ignore_index=True)


def with_audit_levels(frame: pd.DataFrame, events_dir: Path | None,
                      audit: pd.DataFrame | None = None) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """A subgroup frame (``subject_id`` per row) and the columns its subgroup tables split
    by: age band, sex and site, and given the pull's ``events_dir`` race and ethnicity too
    (:func:`audit_levels`, None where unrecorded; ``audit``: those levels already read,
    for every subject of ``frame`` at least)."""
    groups = ("age_band", "sex", "site")
    if events_dir is None:
        return frame, groups
    if audit is None:
        audit = audit_levels(events_dir, frame["subject_id"])
    audit = audit.set_index("subject_id")
    frame = frame.assign(**{group: audit[group].reindex(frame["subject_id"]).to_numpy(object) for group, _ in AUDIT_GROUPS})
    return frame, groups + tuple(group for group, _ in AUDIT_GROUPS)


def label_demographics(events_dir: Path, labels_path: Path) -> pd.DataFrame:
    """The subgroups' age band and sex of every label row, read from the records as
    :func:`demographics` reads them from a feature matrix (age at the prediction time
    from the first timed birth event, in years of 365.25 days; sex from the static
    gender codes, M over F), for the people ledger (``records.people``): one row per
    label row, ``subject_id``, ``prediction_time``, and one column per way a published
    table splits the held-out rows: ``age_band``, ``sex``, and ``sex/F`` and ``sex/M``
    (a matrix that kept one gender column only splits the rows into those with that
    code and the rest, ``~``), ``race`` and ``ethnicity`` (:func:`audit_levels`). A missing
    level is ``~`` too. Site-local; nothing of it is published."""
    events = f"read_parquet('{Path(events_dir) / '*.parquet'}')"
    codes = ", ".join(f"'{code}'" for code, _ in SEX_CODES)
    sql = f"""
        WITH b AS (SELECT subject_id, min(time) AS birth FROM {events}
                   WHERE code = '{schema.BIRTH_CODE}' AND time IS NOT NULL GROUP BY 1),
        g AS (SELECT subject_id, {', '.join(f"bool_or(code = '{c}') AS {s}" for c, s in SEX_CODES)} FROM {events}
              WHERE code IN ({codes}) AND time IS NULL GROUP BY 1)
        SELECT CAST(l.subject_id AS BIGINT) AS subject_id, l.prediction_time,
               CAST(epoch_us(l.prediction_time) - epoch_us(b.birth) AS DOUBLE) / {YEAR_US} AS age, g.F, g.M
        FROM read_parquet('{labels_path}') l LEFT JOIN b USING (subject_id) LEFT JOIN g USING (subject_id)
        ORDER BY 1, 2"""
    with duckdb.connect() as con:
        frame = con.sql(sql).df()
    # A matrix reads a missing age as 0 (no entry in its sparse column): so do the levels.
    bands = pd.Series(clinical.age_band(frame["age"].fillna(0).to_numpy(float)), dtype=object)
    out = frame[["subject_id", "prediction_time"]].assign(age_band=bands.fillna("~").to_numpy(), sex="~")
    for _, label in SEX_CODES:  # M over F, as in demographics
        has = frame[label].fillna(False).astype(bool).to_numpy()
        out.loc[has, "sex"] = label
        out[f"sex/{label}"] = np.where(has, label, "~")
    audit = audit_levels(events_dir, out["subject_id"]).set_index("subject_id")
    for group, _ in AUDIT_GROUPS:
        out[group] = audit[group].reindex(out["subject_id"]).fillna("~").to_numpy(object)
    return out


def evaluate_and_explain(
    matrix: FeatureMatrix,
    trained: TrainedModels,
    out_dir: Path,
    config: EvaluationConfig,
    *,
    site: str = "site",
    outcomes_path: Path | None = None,
    models: ModelConfig | None = None,
    events_dir: Path | None = None,
) -> Evaluation:
    """Held-out discrimination (patient-bootstrap CIs) and calibration for each model;
    for the primary model also calibration statistics, the threshold table, the decision
    curve, lead times, subgroups, TreeSHAP explanations and the figures; and, given the
    training settings ``models`` and ``config.learning_curve.fractions``, the learning
    curve (``evaluation.learning_curve``). Subgroups are age band, sex and site, and with
    the pull's ``events_dir`` race and ethnicity too (:func:`audit_levels`)."""
    out = Evaluation(Path(out_dir))
    (out.dir / "figures").mkdir(parents=True, exist_ok=True)
    record: dict = {"held_out": {}, "calibration": {}, "calibration_stats": {}}
    curves, calib = {}, {}
    labels = model_labels(json.loads(trained.summary_path.read_text()) if trained.summary_path.exists() else None)
    X, rows, columns = matrix.load()
    held_rows = np.flatnonzero(rows[schema.SPLIT].to_numpy() == schema.HELD_OUT)
    with stage("evaluate") as counts:
        scores = {}
        for model in (*MODELS, UNCALIBRATED):
            held = held_out_frame(trained, model)
            y = held[schema.BOOLEAN_VALUE].to_numpy(bool)
            p = held[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float)
            scores[model] = (y, p)
            record["held_out"][model] = metrics.evaluate(
                y, p, held[schema.SUBJECT_ID].to_numpy(), n_boot=config.bootstrap, seed=config.seed
            )
        # The trees without the blend (a training from before session 38 has no such file)
        if trained.predictions_path(TREES).exists():
            held = held_out_frame(trained, TREES)
            scores[TREES] = (held[schema.BOOLEAN_VALUE].to_numpy(bool), held[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float))
            record["held_out"][TREES] = metrics.evaluate(*scores[TREES], held[schema.SUBJECT_ID].to_numpy(),
                                                         n_boot=config.bootstrap, seed=config.seed)
        held = held_out_frame(trained, PRIMARY)
        y, p = scores[PRIMARY]
        # the AUROC these rows' case mix allows if the risks were right: the reference an
        # external site's is read against (``metrics.model_based_concordance``)
        record["held_out"][PRIMARY] |= model_based(record["held_out"][PRIMARY], p) | risk_spread(p)
        # each baseline against the registered model on the same rows and draws (``paired``)
        subjects = held[schema.SUBJECT_ID].to_numpy()
        for model in [*MODELS[1:], *([TREES] if TREES in scores else [])]:
            record["held_out"][model]["paired"] = paired_with_primary(
                record["held_out"], model, scores, subjects, n_boot=config.bootstrap, seed=config.seed)
        smoothed = clinical.smoothed_calibration(y, p)
        record["smoothed_calibration"] = smoothed.to_dict(orient="records")
        # Every table and figure drawn from one ranking publishes cut-offs of it, which
        # must not leave a band of 1..10 events or non-events between them: one ledger per
        # ranking (the calibrated and uncalibrated model rank alike), filled in order of
        # importance: the operating points, the decision curve, the calibration bins, the
        # ROC and precision-recall curves.
        ledgers = {model: privacy.Cutoffs(*scores[model]) for model in MODELS}
        ledgers[UNCALIBRATED] = ledgers[PRIMARY]
        # Alert budgets' thresholds are set on the tuning split and scored here, as a
        # deployed model's would be (set beforehand, on other people).
        tuning = split_frame(trained, PRIMARY, schema.TUNING)[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float)
        record["alert_budget_source"] = schema.TUNING if tuning.size else schema.HELD_OUT
        record["thresholds"] = clinical.threshold_table(
            y, p, thresholds=config.thresholds, alert_rates=config.alert_budgets, budget_from=tuning if tuning.size else None,
            operating_budget=config.operating_budget, cutoffs=ledgers[PRIMARY],
            subjects=held[schema.SUBJECT_ID].to_numpy(), n_boot=config.bootstrap, seed=config.seed,
        ).to_dict(orient="records")
        dca = clinical.decision_curve(y, p, thresholds=config.net_benefit_thresholds, cutoffs=ledgers[PRIMARY])
        record["decision_curve"] = dca.to_dict(orient="records")
        for model in (*MODELS, UNCALIBRATED):
            if model == UNCALIBRATED:
                # It ranks as the calibrated model except where the calibrator ties risks (a sigmoid clips
                # them near 0 and 1): its mean risk over the calibrated model's groups, which cuts nothing anew.
                calib[labels[model]] = metrics.calibration_on_groups(*scores[model], scores[PRIMARY][1], calib[labels[PRIMARY]])
            else:
                calib[labels[model]] = metrics.calibration_curve(*scores[model], cutoffs=ledgers[model])
            record["calibration"][model] = calib[labels[model]].to_dict(orient="records")
            # the ECE over the groups this curve publishes, not over the raw deciles
            record["calibration_stats"][model] = clinical.calibration_stats(*scores[model], curve=calib[labels[model]])
        record["held_out"][PRIMARY].update(_without_counts(record["calibration_stats"][PRIMARY]))
        for model in MODELS:  # the uncalibrated model's ROC is the calibrated one's
            curves[labels[model]] = clinical.disclosed_curve(*scores[model], cutoffs=ledgers[model])
        age, sex = demographics(X[held_rows], columns)
        frame = pd.DataFrame(
            {"y": y, "p": p, "subject_id": held[schema.SUBJECT_ID].to_numpy(), "age_band": clinical.age_band(age),
             "sex": sex, "site": site}
        )
        # race and ethnicity of every row's person: the subgroups' and the characteristics'
        audit = None if events_dir is None else audit_levels(events_dir, rows[schema.SUBJECT_ID])
        frame, groups = with_audit_levels(frame, events_dir, audit)
        alert_at, budget = operating_point(record["thresholds"], p, config.operating_budget)
        point = operating_label(budget, config.operating_budget)
        timed = timed_rows(held, p, outcomes_path)
        if timed is not None:  # each level's lead times too
            frame = frame.assign(prediction_time=timed["prediction_time"].to_numpy(),
                                 outcome_time=timed["outcome_time"].to_numpy())
        record["subgroups"] = clinical.subgroup_metrics(
            frame, groups=groups, n_boot=config.bootstrap, seed=config.seed, threshold=alert_at
        ).to_dict(orient="records")
        record["subgroup_gaps"] = clinical.subgroup_gaps(record["subgroups"])
        record["subgroup_threshold"] = {"threshold": alert_at, "operating_point": point, "alert_budget": budget}
        record["lead_time"] = None if timed is None else (
            clinical.lead_times(timed, threshold=alert_at) | {"threshold": alert_at, "operating_point": point})
        counts.update(held_out_rows=int(len(held)), bootstrap=config.bootstrap)
    with stage("explain") as counts:
        model = load_primary(trained)
        explanations, values, sampled, base = explain(
            model, X[held_rows], columns, out.explanations.dir, max_rows=config.shap_rows, seed=config.seed
        )
        importance = pd.read_parquet(explanations.importance_path)
        counts.update(rows=int(values.shape[0]), features=int(values.shape[1]))
    with stage("figures") as counts:
        position = {name: i for i, name in enumerate(columns["name"])}
        explained = X[held_rows][sampled]
        ranked = [position[n] for n in importance["name"]]
        idx = np.array(plotted_features(explained, ranked, top=len(ranked)), dtype=np.int64)
        data = top_coded(absent_as_nan(explained[:, idx]), rows[schema.SUBJECT_ID].to_numpy()[held_rows][sampled])
        drawable = np.flatnonzero(~np.isnan(data).all(axis=0))[:15]  # top-coding blanks a column too few people hold
        idx, data = idx[drawable], data[:, drawable]
        names = [plots.short_label(d) for d in columns["description"].to_numpy()[idx]]
        record["plotted_features"] = [str(d) for d in columns["description"].to_numpy()[idx]]
        # The ROC curve's steps count the events: not drawn when the metrics are withheld; nor
        # is the calibration figure, whose every curve is then withheld (it drew an empty frame).
        figures = {} if record["held_out"][PRIMARY].get("withheld") else {
            "roc_pr": plots.roc_pr(curves, float(np.mean(y))),
            "calibration": plots.calibration(calib, (labels[PRIMARY], smoothed)),
        }
        figures |= {"shap_bar": plots.shap_bar(importance, method=plots.shap_method(model.blend))}
        if dca["net_benefit_model"].notna().any():  # else every point is withheld: an empty figure says nothing
            figures["decision_curve"] = plots.decision_curve(dca)
        if idx.size:  # else every top feature is recorded (or missing) in 1..10 explained rows
            figures["shap_beeswarm"] = plots.shap_beeswarm(values[:, idx], data, names, base)
        for k in range(min(DEPENDENCE_FIGURES, idx.size)):
            figures[f"shap_dependence_{k + 1}"] = plots.shap_dependence(values[:, idx], data, names, base, k)
        # Waterfalls for the highest-risk explained held-out rows, named by row number only.
        risk = model.probability(explained)
        record["waterfall_rows"] = []
        for k, row in enumerate(np.argsort(-risk, kind="stable")[:WATERFALL_FIGURES] if idx.size else []):
            figures[f"shap_waterfall_{k + 1}"] = plots.shap_waterfall(values[row], idx, names, base)
            record["waterfall_rows"].append(int(sampled[row]))  # position among the held-out rows
        for name, png in figures.items():
            out.figure(name).write_bytes(png)
        counts["figures"] = len(figures)
    with stage("characteristics") as counts:
        by_row = None if audit is None else {
            group: audit.set_index("subject_id")[group].reindex(rows[schema.SUBJECT_ID]).to_numpy(object)
            for group, _ in AUDIT_GROUPS}
        record["characteristics"] = characteristics(X, rows, columns, importance, top=config.characteristics_top,
                                                    audit=by_row, subgroups=record["subgroups"])
        counts["rows"] = len(record["characteristics"]["rows"])
    if models is not None and config.learning_curve.fractions:
        summary = json.loads(trained.summary_path.read_text())
        params = (summary.get("search") or {}).get("best_params") or None
        record["learning_curve"] = learning_curve(X, rows, models, params, config.learning_curve,
                                                  n_boot=config.bootstrap, seed=config.seed,
                                                  whole=whole_train_learners(trained, summary))
        if any(p["fitted"] for p in record["learning_curve"]["points"]):  # else an empty frame says nothing
            out.figure("learning_curve").write_bytes(plots.learning_curve(record["learning_curve"]))
    record["top_features"] = importance.head(20)[["name", "description", "mean_abs_shap"]].to_dict(orient="records")
    out.metrics_path.write_text(json.dumps(json_safe(record), indent=2, allow_nan=False))
    return out


def whole_train_learners(trained: TrainedModels, summary: dict):
    """The trees and the L1-logistic ``trained`` fitted on the whole train split, as the
    learning curve fits its 100% point (``fit_xgboost`` from one base rate, and
    ``fit_l1_logistic``; on a Dask executor, its Dask fit): reused there rather than fitted
    again. None when the trees boost from the L1's offsets (``offset`` l1), which the
    curve's learners do not."""
    if (summary.get("xgboost") or {}).get("offset", {}).get("method", "none") != "none":
        return None
    return load_xgboost(trained.xgboost_path), L1Logistic.from_json(json.loads(trained.l1_path.read_text()))


def plotted_features(X, ranked: list[int], *, top: int) -> list[int]:
    """The first ``top`` of the ``ranked`` columns that the per-row SHAP figures (beeswarm,
    dependence) may draw: those recorded in at least 11 of the explained rows (none: there
    is no value to draw), and missing in none or at least 11. A column recorded (or
    missing) in 1..10 rows would show those rows as a countable handful of points, with
    their values."""
    X = sp.csc_matrix(X)
    present = np.diff(X.indptr)
    n = X.shape[0]
    ok = [j for j in ranked if present[j] >= privacy.MIN_CELL and privacy.suppress(int(n - present[j])) is not None]
    return ok[:top]


def top_coded(data: np.ndarray, subjects: np.ndarray, min_cell: int = privacy.MIN_CELL) -> np.ndarray:
    """``data`` (explained rows x plotted features, NaN where absent) as the per-row SHAP
    figures may draw it: a drawn value has ``min_cell`` subjects at or below it and as many
    at or above it. Each column's values below the ``min_cell``-th smallest subject value
    are drawn at it, and those above the ``min_cell``-th largest at that (bottom- and
    top-coding), so no value that fewer than ``min_cell`` people reach is shown, such as
    one person's extreme lab result. ``subjects``: each row's subject. A column where no
    value can be drawn so (fewer than ``2 * min_cell - 1`` subjects recorded, short of
    ties) is blanked (NaN)."""
    out = np.array(data, dtype=np.float64, copy=True)
    subjects = np.asarray(subjects)
    for j in range(out.shape[1]):
        present = ~np.isnan(out[:, j])
        per = pd.DataFrame({"s": subjects[present], "v": out[present, j]}).groupby("s")["v"].agg(["min", "max"])
        if len(per) < min_cell:
            out[:, j] = np.nan
            continue
        low = np.sort(per["min"].to_numpy())[min_cell - 1]  # min_cell subjects have a value at or below it
        high = np.sort(per["max"].to_numpy())[::-1][min_cell - 1]  # ... at or above it
        if low > high:
            out[:, j] = np.nan
            continue
        out[present, j] = np.clip(out[present, j], low, high)
    return out


def absent_as_nan(X) -> np.ndarray:
    """A dense copy of sparse rows with the absent (unstored) entries as NaN, as Forewarn's
    matrices mean them: shap's figures leave NaN values undrawn (grey), not as zeros."""
    X = sp.csr_matrix(X)
    dense = np.full(X.shape, np.nan)
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    dense[rows, X.indices] = X.data
    return dense


def operating_point(thresholds: list[dict], p: np.ndarray, budget: float) -> tuple[float, float]:
    """The operating point for lead times and subgroups, as (threshold, alert budget): the
    threshold of alert budget ``budget`` when its row of the threshold table is published;
    when its 2x2 table is withheld (a cell of 1..10, or a band beside another row), the
    nearest budget whose row is published, larger ones first (more alerts, larger cells),
    since at a withheld point every subgroup's utility would be withheld too. With none
    published, ``budget``'s threshold all the same."""
    rows = {r["alert_budget"]: r for r in thresholds if r.get("alert_budget") is not None and r.get("threshold") is not None}
    order = [budget] + sorted(b for b in rows if b > budget) + sorted((b for b in rows if b < budget), reverse=True)
    for b in order:
        if b in rows and rows[b].get("tp") is not None:
            return float(rows[b]["threshold"]), b
    if budget in rows:
        return float(rows[budget]["threshold"]), budget
    return (float(np.quantile(p, 1 - budget, method="higher")) if p.size else 1.0), budget


def operating_label(budget: float, requested: float) -> str:
    label = f"{budget:.0%} alert budget"
    return label if budget == requested else f"{label} (the {requested:.0%} budget's 2×2 table is withheld here)"


def timed_rows(held: pd.DataFrame, p: np.ndarray, outcomes_path: Path | None) -> pd.DataFrame | None:
    """The held-out rows as :func:`clinical.lead_times` takes them (each row's subject's
    outcome time from the label stage's ``<task>.outcomes.parquet``), in their order;
    None without that file."""
    if outcomes_path is None or not Path(outcomes_path).is_file():
        return None
    outcomes = pd.read_parquet(outcomes_path, columns=[schema.SUBJECT_ID, "outcome_time"])
    return pd.DataFrame(
        {"subject_id": held[schema.SUBJECT_ID].to_numpy(), "prediction_time": held[schema.PREDICTION_TIME].to_numpy(),
         "label": held[schema.BOOLEAN_VALUE].to_numpy(bool), "probability": p}
    ).merge(outcomes, on=schema.SUBJECT_ID, how="left")


def json_safe(value):
    """NaN and infinities become null, so the file is strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


