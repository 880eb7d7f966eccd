"""Evaluate trained models on the held-out split, explain the primary model, build the report.

Everything here returns or writes plain records (``metrics.json``, ``shap.npz``,
``report.html``); the flow's MLflow adapter logs them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from forewarn.evaluation import metrics, plots
from forewarn.evaluation.explain import Explanations, explain
from forewarn.features.featurize import FeatureMatrix
from forewarn.features.labels import ATTRITION_STEPS
from forewarn.models.train import (
    AGE_SEX,
    BASELINE,
    MODELS,
    PRIMARY,
    UNCALIBRATED,
    TrainedModels,
    load_xgboost,
)
from forewarn.records import privacy, schema
from forewarn.records.progress import stage

MODEL_LABELS = {
    PRIMARY: "XGBoost (calibrated)",
    BASELINE: "L1-logistic regression",
    AGE_SEX: "Age + sex logistic",
    UNCALIBRATED: "XGBoost (uncalibrated)",
}


class EvaluationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap: int = Field(200, ge=10)
    seed: int = 0
    shap_rows: int = Field(2000, ge=10)


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


FIGURES = ("roc_pr", "calibration", "shap_bar", "shap_beeswarm")


def evaluate_and_explain(
    matrix: FeatureMatrix, trained: TrainedModels, out_dir: Path, config: EvaluationConfig
) -> Evaluation:
    """Held-out metrics with patient-bootstrap CIs for each model, calibration curves,
    TreeSHAP of the primary model, and the figures."""
    out = Evaluation(Path(out_dir))
    (out.dir / "figures").mkdir(parents=True, exist_ok=True)
    record: dict = {"held_out": {}, "calibration": {}}
    curves, calib = {}, {}
    with stage("evaluate") as counts:
        for model in (*MODELS, UNCALIBRATED):
            pred = pd.read_parquet(trained.predictions_path(model))
            held = pred[pred[schema.SPLIT] == schema.HELD_OUT]
            y = held[schema.BOOLEAN_VALUE].to_numpy(bool)
            p = held[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float)
            record["held_out"][model] = metrics.evaluate(
                y, p, held[schema.SUBJECT_ID].to_numpy(), n_boot=config.bootstrap, seed=config.seed
            )
            calib[MODEL_LABELS[model]] = metrics.calibration_curve(y, p)
            record["calibration"][model] = calib[MODEL_LABELS[model]].to_dict(orient="records")
            if model != UNCALIBRATED:  # a monotone map: the same ROC as the calibrated model
                curves[MODEL_LABELS[model]] = (y, p)
        counts.update(held_out_rows=int(len(held)), bootstrap=config.bootstrap)
    with stage("explain") as counts:
        X, rows, columns = matrix.load()
        held_rows = np.flatnonzero(rows[schema.SPLIT].to_numpy() == schema.HELD_OUT)
        clf = load_xgboost(trained.xgboost_path)
        explanations, values, sampled, base = explain(
            clf, X[held_rows], columns, out.explanations.dir, max_rows=config.shap_rows, seed=config.seed
        )
        importance = pd.read_parquet(explanations.importance_path)
        counts.update(rows=int(values.shape[0]), features=int(values.shape[1]))
    with stage("figures"):
        position = {name: i for i, name in enumerate(columns["name"])}
        idx = np.array([position[name] for name in importance.head(15)["name"]], dtype=np.int64)
        figures = {
            "roc_pr": plots.roc_pr(curves),
            "calibration": plots.calibration(calib),
            "shap_bar": plots.shap_bar(importance),
            "shap_beeswarm": plots.shap_beeswarm(
                values[:, idx],
                X[held_rows][sampled][:, idx].toarray(),
                [_short(d) for d in columns["description"].to_numpy()[idx]],
                base,
            ),
        }
        for name, png in figures.items():
            out.figure(name).write_bytes(png)
    record["top_features"] = importance.head(20)[["name", "description", "mean_abs_shap"]].to_dict(orient="records")
    out.metrics_path.write_text(json.dumps(json_safe(record), indent=2, allow_nan=False))
    return out


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


def _short(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _shown(count: int | None) -> str:
    """An already-suppressed count (None means below 11) for display."""
    return f"<{privacy.MIN_CELL}" if count is None else f"{count:,}"


def _ci(rec: dict, metric: str) -> str:
    return f"{_fmt(rec[metric])} ({_fmt(rec[metric + '_ci_low'])}–{_fmt(rec[metric + '_ci_high'])})"


def report_context(
    *,
    site: str,
    task,
    attrition: dict,
    pull_report: dict,
    features_shape: dict,
    feature_config,
    training: dict,
    evaluation: Evaluation,
    decision: str,
    code_version: str,
    data_digest: str,
    generated_at: str,
    quality: dict,
    mlflow_run_id: str | None = None,
) -> dict:
    """Everything the report template shows, with every count passed through suppression."""
    m = evaluation.load_metrics()
    steps = dict(ATTRITION_STEPS) | {"labelled": "labelled prediction times", "positive": "positive labels"}
    attrition_rows = [
        {"step": steps.get(k, k), "times": privacy.shown(v["times"]), "subjects": privacy.shown(v["subjects"]) if k in ("candidates", "labelled", "positive") else "–"}
        for k, v in attrition.items()
    ]
    tables = [
        {"name": name, "read": privacy.shown(t["read"]), "kept": privacy.shown(t["kept"]), "quarantined": privacy.shown(t["quarantined"])}
        for name, t in pull_report["tables"].items()
    ]
    models = [
        {
            "name": MODEL_LABELS[k],
            "auroc": _ci(rec, "auroc"),
            "auprc": _ci(rec, "auprc"),
            "brier": _fmt(rec["brier"], 4),
            "n": privacy.shown(rec["n"]) if rec["n"] is not None else "<11",
            "events": privacy.shown(rec["events"]) if rec["events"] is not None else "<11",
        }
        for k, rec in m["held_out"].items()
    ]
    calibration = [
        {
            "bin": c["bin"],
            "n": "<11" if c["n"] is None else f"{c['n']:,}",
            "events": "<11" if c["events"] is None else f"{c['events']:,}",
            "mean_predicted": _fmt(c["mean_predicted"]),
            "observed": _fmt(c["observed"]),
        }
        for c in m["calibration"][PRIMARY]
    ]
    xgb_params = training["xgboost"]["params"]
    model_text = (
        f"XGBoost (hist, {training['xgboost']['best_iteration'] + 1} trees after early stopping on the tuning split's log-loss; "
        f"learning rate {xgb_params['learning_rate']}, max depth {xgb_params['max_depth']}) is the registered model. "
        f"The baseline is an L1-regularised logistic regression on max-abs-scaled features with C = {training['l1_logistic']['C']} "
        f"chosen on the tuning split ({training['l1_logistic']['nonzero_coefficients']} non-zero coefficients). "
        "Splits are by subject (a seeded hash of the pseudonymous id: 70% train, 15% tuning, 15% held-out)."
    )
    n_train_pos = training["positives"]["train"]
    limitations = [
        "Internal validation only (held-out subjects of the same site); temporal and external validation come with later releases.",
        "Probabilities are not recalibrated; see the calibration curve before using them as absolute risks.",
        "Dates are shifted per subject for de-identification, so calendar effects (season, coding changes) are blurred.",
        "Synthetic demo data: performance says nothing about a real population." if pull_report.get("demo") else
        "Performance holds for the population and coding practice of this site; check it before use elsewhere.",
    ]
    if n_train_pos < 10 * max(1, features_shape["columns"] // 50):
        limitations.insert(0, f"Few training events ({privacy.shown(n_train_pos)}) for {features_shape['columns']} features: expect optimism and unstable importances.")
    return {
        "site": site,
        "task": {
            "name": task.name,
            "description": task.description,
            "outcome_codes": ", ".join(task.outcome.codes),
            "at_codes": ", ".join(task.prediction_times.at_codes),
            "gap_days": task.gap_days,
            "horizon_days": task.horizon_days,
        },
        "task_digest": task.digest(),
        "data_digest": data_digest,
        "code_version": code_version,
        "generated_at": generated_at,
        "mlflow_run_id": mlflow_run_id,
        "models": models,
        "decision": decision,
        "data": {
            "tables": tables,
            "subjects": privacy.shown(pull_report["subjects"]),
            "events": privacy.shown(pull_report["events"]),
            "time_span": " to ".join(str(x) for x in pull_report["time_span"]),
            "source": ", ".join(f"{k} {v}" for k, v in pull_report.get("source", {}).items() if k != "location"),
            "top_codes": [
                {"code": c["code"], "events": _shown(c["events"]), "subjects": _shown(c["subjects"])}
                for c in quality["top_codes"][:10]
            ],
            "implausible": [
                {"code": v["code"], "values": _shown(v["values"]), "outside": _shown(v["outside"]),
                 "bounds": f"{v['bounds'][0]:g}–{v['bounds'][1]:g}"}
                for v in quality["values_outside_plausible_range"]
            ],
        },
        "attrition": attrition_rows,
        "splits": [
            {"name": s, "rows": privacy.shown(training["rows"][s]), "positives": privacy.shown(training["positives"][s])}
            for s in schema.SPLITS
        ],
        "features": {
            "columns": f"{features_shape['columns']:,}",
            "nonzeros": f"{features_shape['nonzeros']:,}",
            "windows": ", ".join(feature_config.windows),
            "aggs": ", ".join(feature_config.aggs),
        },
        "model_text": model_text,
        "calibration": calibration,
        "top_features": [{"description": f["description"], "mean_abs_shap": _fmt(f["mean_abs_shap"], 4)} for f in m["top_features"]],
        "images": {name: evaluation.figure(name).read_bytes() for name in FIGURES},
        "limitations": limitations,
    }
