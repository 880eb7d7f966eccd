"""The self-contained HTML report: aggregates and embedded figures, no patient rows."""

from __future__ import annotations

import base64
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np

from forewarn.evaluation.evaluate import MODEL_LABELS, Evaluation
from forewarn.features.labels import ATTRITION_STEPS
from forewarn.models.train import PRIMARY
from forewarn.records import privacy, schema

TEMPLATES = "forewarn.evaluation.templates"


def render(context: dict) -> str:
    """Render the report; ``context['images']`` holds PNG bytes, embedded as base64."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string((resources.files(TEMPLATES) / "report.html.j2").read_text())
    images = {k: base64.b64encode(v).decode() for k, v in context["images"].items()}
    return template.render({**context, "images": images})


def write_report(context: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(render(context), encoding="utf-8")
    tmp.replace(path)
    return path


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
        "images": {f.stem: f.read_bytes() for f in sorted((evaluation.dir / "figures").glob("*.png"))},
        "limitations": limitations,
    }
