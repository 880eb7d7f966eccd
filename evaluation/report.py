"""The self-contained HTML report: aggregates and embedded figures, no patient rows.

The report follows the TRIPOD+AI reporting items (its last section maps the items to
the sections). Only aggregates reach it, and every count passes through small-cell
suppression (:mod:`forewarn.records.privacy`): a count of 1..10 is shown as "<11".
Where counts in one table add up to a total published elsewhere, one hidden count could
be recovered by subtraction, so a second count is withheld as well (complementary
suppression, shown as "withheld"). No subject ids, prediction times or dates of
individual events are shown; waterfall plots are labelled by held-out row number only.
"""

from __future__ import annotations

import base64
import re
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from forewarn.evaluation import clinical, metrics, plots
from forewarn.evaluation.drift import ACTIONS, MODERATE_PSI
from forewarn.evaluation.evaluate import Evaluation, model_labels
from forewarn.features.featurize import AGG_NAMES
from forewarn.features.labels import ATTRITION_STEPS, TaskSpec
from forewarn.models.train import (
    AGE_SEX,
    BASELINE,
    MIN_EVENTS_PER_FEATURE,
    PRIMARY,
    TREES,
    UNCALIBRATED,
)
from forewarn.records import privacy, schema
from forewarn.records.pull import PULL_CHANGE_ALERT, pull_changes, table_counts

TEMPLATES = "forewarn.evaluation.templates"
SUPPRESSED = f"<{privacy.MIN_CELL}"
WITHHELD = "withheld"
# Metrics of an evaluation set with 1..10 events or non-events (evaluation.metrics.evaluate).
WITHHELD_METRICS = f"withheld (fewer than {privacy.MIN_CELL} events or non-events)"
MODEL_ORDER = (PRIMARY, UNCALIBRATED, TREES, BASELINE, AGE_SEX)
SPLIT_LABELS = {schema.TRAIN: "train", schema.TUNING: "tuning", schema.HELD_OUT: "held-out"}
DESIGNS = {
    "internal": "internal (held-out subjects, same site)",
    "external": "external (model shipped to another site)",
    "temporal": "temporal (later prediction times held out)",
    "network": "network (one model trained across the sites without moving rows)",
    "registered": "registered model from outside this study (external; a comparator, not this model)",
    "leave_one_site_out": "leave one site out",
}
GROUP_LABELS = {"age_band": "Age band", "sex": "Sex", "site": "Site", "race": "Race", "ethnicity": "Ethnicity"}
SEX_LABELS = {"F": "female", "M": "male"}
NET_BENEFIT_AT = (0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
SMOOTH_AT = (0.1, 0.25, 0.5, 0.75, 0.9)


def render(context: dict) -> str:
    """Render the report; ``context['images']`` holds PNG bytes, embedded as base64."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string((resources.files(TEMPLATES) / "report.html.j2").read_text())
    images = {k: base64.b64encode(v).decode() for k, v in context["images"].items()}
    return template.render({**context, "images": images})


def write_report(context: dict, path: Path, *, template: str = "report.html.j2") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    if template == "report.html.j2":
        text = render(context)
    else:
        env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
        text = env.from_string((resources.files(TEMPLATES) / template).read_text()).render(context)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


VALIDATION_DESIGNS = ("registered", "external", "temporal")


def validation_context(*, site: str, task: TaskSpec, model: dict, record: dict, attrition: dict, features: dict,
                       data_digest: str, code_version: str, generated_at: str, mlflow_run_id: str,
                       design: str = "registered") -> dict:
    """What a validation run's own report shows (``validation.html.j2``), one per run of a
    validation design:

    * ``registered``: a registered model from outside the study validated at ``site``;
    * ``external``: a site's model of tonight validated at another site, ``site``;
    * ``temporal``: ``site``'s model refitted on the times before a cutoff and tested on
      those from then on.

    It gives the model (``model``: ``name``, ``version`` (None before it is registered),
    ``site`` it was trained at, ``study``, ``run_id``, ``ref``), the participants at
    ``site`` (``attrition``, under the rule of 11), the features it was scored on, and
    ``record``: for ``registered`` and ``external``
    ``evaluation.validation.external_validation``'s (its metrics as shipped and after
    recalibration on the site's tuning split, and its subgroups at the alert threshold it
    was published with, complementary suppression as in the site's own report); for
    ``temporal`` the temporal stage's (``held_out_metrics``' numbers with ``cutoff``,
    ``development`` and ``crosses_cutoff``)."""
    if design not in VALIDATION_DESIGNS:
        raise ValueError(f"validation_context: design must be one of {', '.join(VALIDATION_DESIGNS)}; got {design!r}.")
    temporal = design == "temporal"
    shipped, recal = (record, None) if temporal else (record["as_shipped"], record.get("recalibrated"))

    def row(label: str, rec: dict) -> dict:
        return {"label": label, "size": _size_text(rec), "auroc": _ci(rec, "auroc"), "auprc": _ci(rec, "auprc"),
                "model_based": "–" if rec.get("withheld") else _fmt(rec.get("model_based_auroc")),
                **{k: _fmt(rec.get(k), 4 if k == "brier" else 3) for k in
                   ("brier", "calibration_slope", "calibration_in_the_large", "ece", "ici", "e90")}}

    method = (record.get("recalibration") or {}).get("method")
    figure = None
    curves = {label: pd.DataFrame(record["calibration"][key]) for key, label in
              (("as_shipped", "as shipped"), ("recalibrated", f"recalibrated here ({method})"))
              if (record.get("calibration") or {}).get(key) and not (key == "recalibrated" and method == "shipped")}
    if curves and not shipped.get("withheld"):
        smoothed = pd.DataFrame(record.get("smoothed_calibration") or [], columns=["predicted", "observed"])
        figure = base64.b64encode(plots.calibration(curves, ("as shipped", smoothed))).decode()
    if temporal:
        development = record.get("development") or {}
        rows = [row(f"refitted on the times before {record['cutoff']}", shipped)]
        period = {"cutoff": record["cutoff"], "development_rows": privacy.shown(development.get("rows")),
                  "development_events": privacy.shown(development.get("events")),
                  "crosses_cutoff": privacy.shown(record.get("crosses_cutoff"))}
    else:
        rows = [row("as shipped (its own calibrator)", shipped)]
        period = None
    if recal:
        rows.append(row("kept as shipped: no calibrator fitted on this site's tuning split beat the model's own there"
                        if method == "shipped" else f"after recalibration on this site's tuning split ({method})", recal))
    point = record.get("subgroup_threshold") or {}
    return {
        "design": design, "site": site, "model": model, "generated_at": generated_at, "code_version": code_version,
        "data_digest": data_digest, "mlflow_run_id": mlflow_run_id, "task_name": task.name,
        "task_digest": task.digest(), "task_description": task.description,
        "split": _split_text(task) if not temporal else (
            f"by time: train and tuning on the prediction times whose {task.horizon_days}-day horizon ends before "
            f"{record['cutoff']}, tested on the times from then on"),
        "flow": _participants(attrition), "features": features, "period": period,
        "withheld": bool(shipped.get("withheld")), "rows": rows, "min_cell": privacy.MIN_CELL,
        "recalibration_note": (record.get("recalibration") or {}).get("note"),
        "recalibrated_text": _recalibrated_text(shipped, recal and recal | {"method": method}),
        "threshold": None if point.get("threshold") is None else _fmt(point["threshold"]),
        "subgroups": _subgroups({"subgroups": record.get("subgroups") or []}, site),
        "suppressed": SUPPRESSED, "figure": figure,
        # slope and CITL beyond the bands (no home AUROC here to compare with)
        "did_not_hold": _did_not_hold([shipped | {"design": "temporal" if temporal else "external", "eval_site": site}],
                                      {}, section="section 3"),
    }


# ------------------------------------------------------------------------ formatting


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and not np.isfinite(value))


def _fmt(value, digits: int = 3) -> str:
    if _missing(value):
        return "–"
    return f"{value:.{digits}f}"


def _pct(value, digits: int = 1) -> str:
    if _missing(value):
        return "–"
    return f"{100 * value:.{digits}f}%"


def _count(value: int | None) -> str:
    """A count for display: "<11" when it is 1..10 or already suppressed (None)."""
    return privacy.shown(value)


def _ci(rec: dict, metric: str) -> str:
    if rec.get("withheld"):
        return WITHHELD_METRICS
    value = rec.get(metric)
    if _missing(value):
        return "–"
    low, high = rec.get(metric + "_ci_low"), rec.get(metric + "_ci_high")
    if _missing(low) or _missing(high):
        return _fmt(value)
    return f"{_fmt(value)} ({_fmt(low)}–{_fmt(high)})"


def _protect(parts: list[int | None], *, spare: tuple[int, ...] = ()) -> list[str]:
    """Display strings for counts that add up to a total published elsewhere: a count of
    1..10 (or an already-suppressed None) is shown as "<11", and the parts
    :func:`privacy.complementary` names as "withheld"."""
    extra = privacy.complementary(parts, spare=spare)
    return [WITHHELD if i in extra else _count(v) for i, v in enumerate(parts)]


ATTRITION_TOTALS = ("candidates", "labelled", "positive")


def _exclusion_steps(attrition: dict) -> list[str]:
    return [k for k in attrition if k not in ATTRITION_TOTALS]


def published_attrition(attrition: dict) -> dict:
    """The label attrition (``features.labels``: counts per exclusion step) as the report's
    participants flow publishes it, for an artifact that leaves the site beside it: the
    candidate and labelled times and subjects and the positive times, each suppressed
    below 11, and the exclusion steps' times and subjects with complementary suppression
    (they add up to candidates less labelled, so a single hidden step would be their
    difference). None where the report shows "<11" or "withheld"."""
    exclusions = _exclusion_steps(attrition)
    times = privacy.suppress_parts([attrition[k]["times"] for k in exclusions])
    subjects = privacy.suppress_parts([attrition[k]["subjects"] for k in exclusions])
    out = {k: {"times": privacy.suppress(attrition.get(k, {}).get("times")),
               "subjects": privacy.suppress(attrition.get(k, {}).get("subjects"))} for k in ("candidates", "labelled")}
    out |= {k: {"times": t, "subjects": n} for k, t, n in zip(exclusions, times, subjects, strict=True)}
    out["positive"] = {"times": privacy.suppress(attrition.get("positive", {}).get("times"))}
    return out


def _split_text(task) -> str:
    """How a task's labelled times are split (section 3's arrow)."""
    temporal = getattr(task, "temporal_split", None)
    if temporal is not None:
        return (f"temporal: train and tuning on prediction times whose {task.horizon_days}-day horizon ends by "
                f"{temporal.held_out_from:%Y-%m-%d}, held out from then on")
    return "by subject (a seeded hash of the pseudonymous id: 70% train, 15% tuning, 15% held-out)"


def _participants(attrition: dict) -> dict:
    """The participants' flow (section 3): candidates, each exclusion step, labelled and
    positive times and subjects; the exclusion chain adds up to candidates - labelled, so
    its steps are protected as a set."""
    steps = dict(ATTRITION_STEPS)
    exclusions = _exclusion_steps(attrition)
    ex_times = _protect([attrition[k]["times"] for k in exclusions])
    ex_subjects = _protect([attrition[k]["subjects"] for k in exclusions])
    return {
        "candidates": {k: _count(attrition.get("candidates", {}).get(k)) for k in ("times", "subjects")},
        "exclusions": [{"step": steps.get(k, k), "times": t, "subjects": s}
                       for k, t, s in zip(exclusions, ex_times, ex_subjects, strict=True)],
        "labelled": {k: _count(attrition.get("labelled", {}).get(k)) for k in ("times", "subjects")},
        "positive": {k: _count(attrition.get("positive", {}).get(k)) for k in ("times", "subjects")},
    }


def _shown_int(text: str) -> bool:
    return text not in (SUPPRESSED, WITHHELD)


# ------------------------------------------------------------------------- sections


def _release_text(release: dict | None, network: bool, used: int | None = None) -> str:
    """What the rule of 11 for leaves did to the trees before they left the site
    (``models.release``); empty when the training record predates it or it was off.
    ``used``: the trees the model predicts with (early stopping keeps its patience's
    further trees in the file, and they are released too)."""
    if not release or network:
        return ""
    before, after, moved = release["leaves_before"], release["leaves_after"], release.get("splits_moved", 0)
    built = f"{release['trees']:,} trees"
    if used is not None and used < release["trees"]:
        built = (f"{release['trees']:,} trees in the file ({used:,} predict; the other {release['trees'] - used:,} are "
                 "early stopping's patience, kept unused)")
    if release["trees_changed"] == 0:
        how = "every leaf XGBoost grew already did"
    else:
        how = (f"{release['trees_changed']:,} of the {built} were mended: {moved:,} splits moved to "
               "another of XGBoost's histogram cuts on the same feature, widening a small group rather than merging it "
               f"away, and the other breaches merged into their parent's leaf, so {after:,} of the {before:,} leaves "
               "remain")
    text = (f"Before it left the site the trees were made to obey the rule of {release['min_cell']} (every leaf holds no "
            f"train subject with the outcome or at least {release['min_cell']}, and likewise without it, so that no leaf "
            f"value gives a small count away): {how}; every leaf value was then recomputed on all train rows by "
            "XGBoost's Newton step.")
    if "thresholds_replaced" in release:  # since session 18
        replaced = release["thresholds_replaced"]
        text += (f" No split's threshold shows a value: each has at least {release['min_cell']} train subjects with a "
                 "value below it and as many at or above it, or parts present values from missing ones"
                 + (f" ({replaced:,} thresholds were replaced so, every train row keeping its leaf)." if replaced else "."))
    return text


def _l1_scaling_text(l1: dict) -> str:
    """How the L1-logistic's features were scaled and chosen (``models.train.l1_columns``)."""
    cell = l1.get("min_cell")
    text = "max-abs-scaled features (scaler fitted on train"
    if cell is None:  # a training record from before session 18
        return text + ")"
    text += "; the scales, each one person's largest value, stay at the site: the model carries each feature's weight"
    left_out = l1.get("columns_left_out", 0)
    if cell > 1 and left_out:
        text += f"; {left_out:,} features that fewer than {cell} train subjects hold a value of were left out"
    return text + ")"


def _order(keys, labels: dict[str, str]) -> list[str]:
    """The models' keys in the report's order; without a calibrator the uncalibrated
    model is the registered model itself, and its identical row is left out."""
    alike = labels.get(PRIMARY, "").endswith("(no calibrator)")
    # Unblended, the trees alone are the uncalibrated model: their row is left out too.
    blended = not labels.get(PRIMARY, "XGBoost (").startswith("XGBoost (")
    ordered = [k for k in MODEL_ORDER if k in keys] + [k for k in keys if k not in MODEL_ORDER]
    return [k for k in ordered if not (alike and k == UNCALIBRATED) and not (k == TREES and not blended)]


def _models(m: dict, labels: dict[str, str]) -> list[dict]:
    held, stats = m["held_out"], m.get("calibration_stats", {})
    rows = []
    for key in _order(held, labels):
        rec = held[key] | {k: v for k, v in stats.get(key, {}).items() if k not in held[key]}
        rows.append(
            {
                "key": key,
                "name": labels.get(key, key),
                "primary": key == PRIMARY,
                "auroc": _ci(rec, "auroc"),
                "auprc": _ci(rec, "auprc"),
                "brier": _fmt(rec.get("brier"), 4),
                "slope": _fmt(rec.get("calibration_slope")),
                "citl": _fmt(rec.get("calibration_in_the_large")),
                "n": _count(rec.get("n")),
                "events": _events_text(rec),
                "gain": _gain(rec.get("paired")),
            }
        )
    return rows


def _gain(paired: dict | None) -> str:
    """A baseline's row: the registered model's AUROC and AUPRC minus its own on the same
    held-out rows, with paired patient-bootstrap 95% intervals; "–" without them."""
    if not paired:
        return "–"
    parts = []
    for key, label in (("auroc", "AUROC"), ("auprc", "AUPRC")):
        d = paired.get(key) or {}
        if _missing(d.get("difference")):
            continue
        ci = "" if _missing(d.get("ci_low")) or _missing(d.get("ci_high")) else \
            f" ({d['ci_low']:+.3f} to {d['ci_high']:+.3f})"
        parts.append(f"{label} {d['difference']:+.3f}{ci}")
    return "; ".join(parts) or "–"


def _calibration_stats(m: dict, labels: dict[str, str]) -> list[dict]:
    stats = m.get("calibration_stats", {})
    out = []
    for key in _order(stats, labels):
        s = stats[key]
        out.append(
            {
                "name": labels.get(key, key),
                "brier": _fmt(s.get("brier"), 4),
                "citl": _fmt(s.get("calibration_in_the_large")),
                "slope": _fmt(s.get("calibration_slope")),
                "intercept": _fmt(s.get("calibration_intercept")),
                "ece": _fmt(s.get("ece"), 4),
                "ici": _fmt(s.get("ici"), 4),
                "e90": _fmt(s.get("e90"), 4),
                "observed": _pct(s.get("observed_rate")),
                "predicted": _pct(s.get("mean_predicted")),
                "suppressed": bool(s.get("suppressed")),
            }
        )
    return out


def _deciles(m: dict) -> list[dict]:
    bins = m.get("calibration", {}).get(PRIMARY, [])
    n = _protect([b.get("n") for b in bins])
    events = _protect([b.get("events") for b in bins])
    out = []
    for b, n_s, e_s in zip(bins, n, events, strict=True):
        if b.get("n") is None:  # withheld whole in metrics.json (a small count, or one that would give it back)
            n_s = e_s = WITHHELD
        # A withheld count must not come back as rate x n.
        rates_ok = _shown_int(n_s) and _shown_int(e_s)
        out.append(
            {
                "bin": b["bin"],
                "n": n_s,
                "events": e_s,
                "mean_predicted": _fmt(b.get("mean_predicted")),
                "observed": _fmt(b.get("observed")) if rates_ok else "–",
            }
        )
    return out


def _smoothed(m: dict) -> list[dict]:
    points = m.get("smoothed_calibration") or []
    if not points:
        return []
    out = []
    for q in SMOOTH_AT:
        i = min(len(points) - 1, max(0, round(q * len(points) - 0.5)))
        pt = points[i]
        out.append(
            {
                "quantile": f"{100 * q:.0f}th",
                "predicted": _fmt(pt.get("predicted")),
                "observed": _fmt(pt.get("observed")),
            }
        )
    return out


def _thresholds(m: dict) -> list[dict]:
    out = []
    for r in m.get("thresholds") or []:
        cells = r.get("tp") is not None
        if r.get("kind") == "alert budget" and m.get("alert_budget_source") == schema.TUNING:
            point = f"risk ≥ {_fmt(r.get('threshold'))}, the top {_pct(r.get('alert_budget'), 0)} of the tuning split"
        elif r.get("kind") == "alert budget":
            point = (
                f"top {_pct(r.get('alert_budget'), 0)} of risk (risk ≥ {_fmt(r.get('threshold'))})"
            )
        else:
            point = f"risk ≥ {_fmt(r.get('threshold'), 2)}"

        def rate(key: str, cells: bool = cells, r: dict = r) -> str:
            if not cells:
                return "–"
            if r.get(key) is None:
                return "n/a"
            low, high = r.get(f"{key}_ci_low"), r.get(f"{key}_ci_high")
            ci = f" ({_pct(low)}–{_pct(high)})" if low is not None and high is not None else ""
            return _pct(r[key]) + ci

        out.append(
            {
                "kind": r.get("kind", "threshold"),
                "point": point,
                "alerts_per_1000": "–"
                if r.get("alerts_per_1000") is None
                else f"{r['alerts_per_1000']:.0f}",
                "sensitivity": rate("sensitivity"),
                "specificity": rate("specificity"),
                "ppv": rate("ppv"),
                "npv": rate("npv"),
                # the four go as a block (one small cell, or a band beside another row): "withheld"
                **{k: _count(r.get(k)) if cells else WITHHELD for k in ("tp", "fp", "fn", "tn")},
                "suppressed": not cells,
            }
        )
    return out


def _net_benefit(m: dict) -> list[dict]:
    rows = {round(float(r["threshold"]), 4): r for r in m.get("decision_curve") or []}
    out = []
    for t in NET_BENEFIT_AT:
        r = rows.get(round(t, 4))
        if r is None:
            continue
        model, treat_all = r.get("net_benefit_model"), r.get("net_benefit_all")
        better = None
        if model is not None and treat_all is not None:
            better = model > max(treat_all, 0.0)
        out.append(
            {
                "threshold": _pct(t, 1 if t < 0.01 else 0),
                "model": _fmt(model, 4),
                "all": _fmt(treat_all, 4),
                "none": _fmt(r.get("net_benefit_none"), 4),
                "better": "–" if better is None else ("yes" if better else "no"),
            }
        )
    return out


def _net_benefit_drawn(m: dict) -> str | None:
    """What the decision-curve figure draws beside the table's chosen thresholds: how many
    of the computed thresholds show the model's net benefit, and which outside the table."""
    rows = m.get("decision_curve") or []
    shown = [float(r["threshold"]) for r in rows if r.get("net_benefit_model") is not None]
    if not rows or not shown:
        return None
    chosen = {round(t, 4) for t in NET_BENEFIT_AT}
    extra = [_pct(t, 1 if t < 0.01 else 0) for t in shown if round(t, 4) not in chosen]
    text = f"The figure draws the model's net benefit at {len(shown)} of the {len(rows)} thresholds computed"
    if extra and len(extra) <= 8:
        listed = extra[0] if len(extra) == 1 else f"{', '.join(extra[:-1])} and {extra[-1]}"
        text += f" (of which {listed} {'is' if len(extra) == 1 else 'are'} not in this table)"
    return text + ("; the others are withheld by the rule above." if len(shown) < len(rows) else ".")


def _lead_time(m: dict) -> dict | None:
    lt = m.get("lead_time")
    if not lt:
        return None
    median = lt.get("median_days")
    return {
        "operating_point": _at_risk(lt.get("operating_point", "operating point"), _fmt(lt.get("threshold"))),
        "threshold": _fmt(lt.get("threshold")),
        "with_outcome": _count(lt.get("subjects_with_outcome")),
        "detected": "suppressed" if lt.get("detected") is None else _count(lt["detected"]),
        "median": "–" if median is None else f"{median:.0f}",
        "iqr": "–"
        if lt.get("q25_days") is None or lt.get("q75_days") is None
        else f"{lt['q25_days']:.0f}–{lt['q75_days']:.0f}",
        "shown": median is not None,
    }


GAP_LABELS = {"auroc": "AUROC", "sensitivity": "sensitivity (equal opportunity)", "ppv": "PPV",
              "alerts_per_1000": "alerts per 1,000 (statistical parity)", "calibration_in_the_large": "CITL"}


def _subgroup_gaps(m: dict) -> list[dict]:
    """Section 10's fairness summary: per subgroup column and metric, the lowest and the
    highest published level and the difference (``evaluation.clinical.subgroup_gaps``)."""
    out = []
    for g in m.get("subgroup_gaps") or []:
        digits = 1 if g["metric"] == "alerts_per_1000" else 3
        out.append({"group": GROUP_LABELS.get(g["group"], g["group"]), "metric": GAP_LABELS.get(g["metric"], g["metric"]),
                    "gap": _fmt(g["gap"], digits), "levels": g["levels"],
                    "low": f"{_fmt(g['low'], digits)} ({_level_label(g['group'], g['low_level'])})",
                    "high": f"{_fmt(g['high'], digits)} ({_level_label(g['group'], g['high_level'])})"})
    return out


def _level_label(group: str, level) -> str:
    return SEX_LABELS.get(level, str(level)) if group == "sex" else str(level)


def _subgroup_point(m: dict) -> str | None:
    point = m.get("subgroup_threshold")
    if not point or point.get("threshold") is None:
        return None
    return _at_risk(point.get("operating_point", "operating point"), _fmt(point["threshold"]))


def _at_risk(label: str, threshold: str) -> str:
    """An operating point's label with its risk threshold, in one parenthesis: "10% alert
    budget (risk ≥ 0.157; the 5% budget's 2×2 table is withheld here)"."""
    head, sep, tail = label.partition(" (")
    return f"{head} (risk ≥ {threshold}; {tail}" if sep and tail.endswith(")") else f"{label} (risk ≥ {threshold})"


def _subgroups(m: dict, site: str | None = None, validations: list[dict] | None = None, network: bool = False) -> list[dict]:
    """Section 10's rows. The "Site" group holds this run's held-out split (its site) and,
    for each external validation that brought one back, the model as shipped to that site
    at this site's operating point (``site_subgroup``: that site's own aggregate, already
    under the rule of 11 there). In the network's own report (``network``) it holds the
    network's model at each other site instead, at that site's own operating point."""
    records = m.get("subgroups") or []
    groups: dict[str, list[list[dict]]] = {}
    for r in records:
        groups.setdefault(r["group"], [[]])[0].append(r)
    design, kind = ("network", "network_at") if network else ("external", "shipped_to")
    shipped = [
        dict(v["site_subgroup"], **{kind: str(v.get("eval_site", v["site_subgroup"].get("level")))})
        for v in validations or []
        if v.get("design") == design and v.get("site_subgroup")
    ]
    if shipped:
        # each site's level is its own held-out split: protected alone, not as parts of one total
        groups.setdefault("site", []).extend([r] for r in shipped)
    out = []
    for group, units in groups.items():
        first = len(out)
        for rows in units:
            # Levels of a group add up to the held-out totals: protect them as a set.
            size = _protect(
                [
                    None if r.get("subjects") is None or r.get("rows") is None else r["rows"]
                    for r in rows
                ]
            )
            events = _protect([r.get("events") for r in rows])
            for k, r in enumerate(rows):
                if not r.get("suppressed"):
                    # an unsuppressed level has 11+ subjects, events and non-events: a count withheld there is
                    # withheld to protect another level, not small (and must not read "<11")
                    size[k], events[k] = (WITHHELD if c == SUPPRESSED else c for c in (size[k], events[k]))
                if not (_shown_int(size[k]) and _shown_int(events[k])):
                    # every metric that would give the withheld count back goes with it (clinical.COUNT_BEARING)
                    r = {**r, **dict.fromkeys((*clinical.COUNT_BEARING, *clinical.UTILITY_COLUMNS))}
                out.append(_subgroup_row(group, r, size[k], events[k], site if group == "site" else None))
        for k, row in enumerate(out[first:]):
            row.update(first=k == 0, span=len(out) - first)
    return out


def _subgroup_row(group: str, r: dict, size, events, site: str | None) -> dict:
    level = r.get("level")
    if r.get("shipped_to"):
        label = f"{r['shipped_to']} (model shipped there)"
    elif r.get("network_at"):
        at = f"; alerts at risk ≥ {r['threshold']:.3f}" if r.get("threshold") is not None else ""
        if at and r.get("alert_budget") is not None:  # the budget may differ from this site's (a withheld 2x2 moves it)
            at += f", its {r['alert_budget']:.0%} alert budget"
        label = f"{r['network_at']} (the network's model there{at})"
    elif level is None:
        label = "missing"
    elif group == "sex":
        label = SEX_LABELS.get(level, str(level))
    elif site is not None and str(level) == site:
        label = f"{level} (this run's held-out split)"
    else:
        label = str(level)
    if _shown_int(size):
        subjects, n_rows = _count(r.get("subjects")), _count(r.get("rows"))
    else:  # subjects and rows withheld together: one would give the other away
        subjects = n_rows = size
    suppressed = bool(r.get("suppressed"))
    counts_ok = _shown_int(n_rows) and _shown_int(events)
    auroc, auprc = _fmt(r.get("auroc")), _fmt(r.get("auprc"))
    if r.get("auroc_ci_low") is not None and r.get("auroc_ci_high") is not None:
        auroc = f"{auroc} ({_fmt(r['auroc_ci_low'])}–{_fmt(r['auroc_ci_high'])})"
    if r.get("auprc_ci_low") is not None and r.get("auprc_ci_high") is not None:
        auprc = f"{auprc} ({_fmt(r['auprc_ci_low'])}–{_fmt(r['auprc_ci_high'])})"
    return {
        "group": GROUP_LABELS.get(group, group),
        "level": label,
        "shipped": bool(r.get("shipped_to")),
        "network_at": bool(r.get("network_at")),
        "subjects": subjects,
        "rows": n_rows,
        "events": events,
        "suppressed": suppressed,
        "auroc": auroc,
        "auprc": auprc,
        "brier": _fmt(r.get("brier"), 4),
        "citl": _fmt(r.get("calibration_in_the_large")),
        "slope": _fmt(r.get("calibration_slope"), 2),
        "ece": _fmt(r.get("ece"), 4),  # as section 8 gives it
        "sensitivity": "–" if r.get("sensitivity") is None else _pct(r["sensitivity"]),
        "ppv": "–" if r.get("ppv") is None else _pct(r["ppv"]),
        "specificity": "–" if r.get("specificity") is None else _pct(r["specificity"]),
        "npv": "–" if r.get("npv") is None else _pct(r["npv"]),
        "alerts": "–" if r.get("alerts_per_1000") is None else f"{r['alerts_per_1000']:.0f}",
        "observed": _pct(r.get("observed_rate")) if counts_ok else "–",
        "predicted": _pct(r.get("mean_predicted")),
        "net_benefit": "–" if r.get("net_benefit") is None else f"{r['net_benefit']:.3f}",
        "net_benefit_all": "–" if r.get("net_benefit_all") is None or not counts_ok else f"{r['net_benefit_all']:.3f}",
        "lead": "–" if r.get("lead_median_days") is None else f"{r['lead_median_days']:.0f}" + (
            "" if r.get("lead_q25_days") is None or r.get("lead_q75_days") is None
            else f" ({r['lead_q25_days']:.0f}–{r['lead_q75_days']:.0f})"),
    }


ANSWERS = {"boost": "models with its trees added", "tuning_logloss": "tuning log-losses", "platt_sums":
           "Platt gradient and Hessian sums", "brier_sums": "Brier sums", "label_counts": "train label counts",
           "columns": "column lists", "can_tune": "can-tune flags", "can_boost": "can-boost flags"}


SENT = ("boost", "tuning_logloss", "platt_sums", "brier_sums", "label_counts")  # in this order


def _boundary_text(boundary: dict | None) -> str:
    """How the network's training reached the sites: from processes of their own, with
    what each sent back (``models.site_process``), or nothing for an in-process run."""
    if not boundary or boundary.get("kind") != "process":
        return ""
    parts = []
    for site, calls in (boundary.get("answers") or {}).items():
        sent = ", ".join(f"{calls[call]['answers']:,} {ANSWERS[call]}" for call in SENT if call in calls)
        size = sum(c["bytes"] for c in calls.values())
        parts.append(f"{site} sent {sent} ({size / 1024:,.0f} kB in all)")
    return ("; each site answered from a process of its own, which held its rows and refused any other call: "
            + "; ".join(parts))


def _signed(value) -> str:
    return "–" if _missing(value) else f"{value:+.3f}"


def _learning_curve(m: dict) -> dict | None:
    """The learning curve's table rows and its last step in words, or None without one."""
    curve = m.get("learning_curve")
    if not curve:
        return None
    from forewarn.evaluation.learning_curve import falling, rising

    learners = curve.get("learners") or {}
    rows = []
    for p in curve.get("points") or []:
        row = {"percent": f"{p['percent']:g}%", "rows": _count(p.get("rows")),
               "subjects": WITHHELD if p.get("subjects_withheld") else _count(p.get("subjects")),
               "event_subjects": WITHHELD if p.get("event_subjects_withheld") else _count(p.get("event_subjects")),
               "fitted": bool(p.get("fitted")), "reason": p.get("reason") or "", "trees": p.get("trees", "–"), "cells": []}
        for learner in learners:
            held = (p.get("held_out") or {}).get(learner) or {}
            apparent = (p.get("apparent") or {}).get(learner) or {}
            row["cells"] += [_ci(held, "auroc"), _ci(held, "auprc"), _fmt(apparent.get("auroc"))]
        rows.append(row)
    step = curve.get("last_step")
    text = ""
    if step:
        def changes(metric: str) -> str:
            return " and ".join(
                f"{_signed(d['difference'])} ({_signed(d['ci_low'])} to {_signed(d['ci_high'])}) for the {name}"
                for k, name in learners.items() for d in [step[k][metric]])
        text = (f"From {step['from']:g}% to {step['to']:g}% of the train subjects the held-out AUROC changed by "
                f"{changes('auroc')}; the AUPRC by {changes('auprc')} (paired patient-bootstrap intervals at "
                f"{100 * step['level']:g}%: 95% over the four together).")
        if rising(step):
            text += (" A gain beyond chance at the last step (a paired interval above 0): the curve is still rising, so "
                     "more training data (more people, or training across the sites: the network design) may help.")
        else:
            text += (" No gain beyond chance at the last step (every paired interval reaches 0 or below): more data of "
                     "this kind is unlikely to help much at this size, though a held-out split this size can miss a "
                     "small gain.")
        fell = [learners[k] for k in falling(step) if k in learners]
        if fell:
            text += (f" The {' and the '.join(fell)} lost beyond chance at the last step (a paired interval below 0). "
                     "More data does not make a stable fit worse, so this points to a fit that varies with the sample "
                     "at this size: for the trees, the tree count early stopping chose and the splits the rule of 11 "
                     "on the leaves had to remove (a feature held by 1-10 train subjects without the outcome, or "
                     "with it, cannot form a leaf), both of which change with the sample. The registered model's "
                     "own held-out numbers are those of section 7.")
    return {"learners": list(learners.values()), "rows": rows, "text": text}


def _figures(images: dict[str, bytes], m: dict) -> dict[str, list[dict]]:
    """Each PNG once, in its section, with alt text and a caption."""
    top = [f.get("description", f.get("name", "")) for f in m.get("top_features") or []]
    rows = m.get("waterfall_rows") or []

    def number(name: str) -> int:
        match = re.search(r"(\d+)$", name)
        return int(match.group(1)) if match else 0

    def caption(name: str) -> tuple[str, str]:
        if name == "roc_pr":
            return (
                "ROC and precision-recall curves",
                "ROC (left) and precision-recall (right) curves on the held-out split, through operating points at least 11 "
                "events and 11 non-events apart (no step of the curve is a band of fewer people); the dotted line in the right "
                "panel is the prevalence.",
            )
        if name == "calibration":
            return (
                "Calibration curves",
                "Observed event rate against mean predicted risk in tenths of predicted risk, per model (deciles whose "
                "boundaries move to a published operating point, or merge, where a band of 1-10 events or non-events would "
                "come back by subtraction), and the registered model's smoothed curve (black; local-linear kernel "
                "regression on logit risk, from the 1st to the 99th percentile of risk); the diagonal is perfect calibration.",
            )
        if name == "learning_curve":
            return (
                "Learning curve",
                "Held-out AUROC (left) and AUPRC (right) of the model's learners refitted on nested shares of the train "
                "subjects (bands: patient-bootstrap 95% CIs), and on their own training sample (dashed): the gap between "
                "the two is overfitting, a rising held-out line says that more data would help.",
            )
        if name == "decision_curve":
            return (
                "Decision curve",
                "Net benefit of alerting by the model against alerting everyone and no one, over threshold probabilities.",
            )
        if name == "shap_bar":
            return (
                "Global SHAP importance",
                "Mean absolute SHAP value (log-odds) of the most important features.",
            )
        if name == "shap_beeswarm":
            return (
                "SHAP beeswarm",
                "Each point is one explained held-out row: its SHAP value for the feature, coloured by the feature value "
                "(grey: not recorded). Only features recorded in at least 11 of the explained rows, and missing in none "
                "or at least 11, are drawn, so that no handful of rows stands out; values beyond the 11th smallest or "
                "largest subject's are drawn at it.",
            )
        if name.startswith("shap_dependence_"):
            k = number(name)
            plotted = m.get("plotted_features") or top  # the top features the per-row figures may draw
            feature = plotted[k - 1] if 0 < k <= len(plotted) else f"feature {k}"
            return (
                f"SHAP dependence: {feature}",
                f"Dependence plot {k}: SHAP value against the value of {feature}. Values beyond the 11th smallest or "
                "largest explained subject's are drawn at it (bottom- and top-coded), so no one person's extreme value "
                "shows.",
            )
        if name.startswith("shap_waterfall_"):
            k = number(name)
            label = (
                f"held-out row {rows[k - 1]}"
                if 0 < k <= len(rows)
                else f"high-risk held-out row {k}"
            )
            return (
                f"SHAP waterfall, {label}",
                f"Waterfall {k}: how the features move {label} (among the highest predicted risks of the explained "
                "rows) from the base value to its log-odds, f(x); the features not drawn one by one are summed in one "
                "bar (\"N other features\").",
            )
        return name.replace("_", " "), name.replace("_", " ")

    def section(name: str) -> str:
        if name == "roc_pr":
            return "performance"
        if name == "calibration":
            return "calibration"
        if name == "decision_curve":
            return "utility"
        if name == "learning_curve":
            return "sample"
        if name in ("shap_bar", "shap_beeswarm"):
            return "explanations"
        if name.startswith("shap_dependence_"):
            return "dependence"
        if name.startswith("shap_waterfall_"):
            return "waterfall"
        return "other"

    out: dict[str, list[dict]] = {
        k: []
        for k in (
            "sample",
            "performance",
            "calibration",
            "utility",
            "explanations",
            "dependence",
            "waterfall",
            "other",
        )
    }
    fixed = {"roc_pr": 0, "calibration": 0, "decision_curve": 0, "shap_bar": 0, "shap_beeswarm": 1}
    for name in sorted(images, key=lambda n: (section(n), fixed.get(n, 0), number(n), n)):
        alt, text = caption(name)
        out[section(name)].append({"name": name, "alt": alt, "caption": text})
    return out


# Where a temporal or external validation's numbers say the model did not hold (section 13):
# a calibration slope outside this band (below 0.8, the usual sign of overfitting), a
# calibration-in-the-large beyond this (about 20% on the odds), an AUROC this far below
# the held-out split's.
HOLDS_SLOPE, HOLDS_CITL, HOLDS_AUROC_DROP = (0.8, 1.25), 0.2, 0.05


def _did_not_hold(validations: list[dict], held: dict, *, section: str = "section 12") -> list[str]:
    """A limitation for each temporal or external validation whose ranking or calibration
    did not carry over (``HOLDS_*``), with its numbers; ``section`` is where they are shown."""
    out = []
    home = held.get("auroc")
    for v in validations:
        if v.get("withheld") or v.get("design") not in ("temporal", "external"):
            continue
        problems = []
        auroc, slope, citl = v.get("auroc"), v.get("calibration_slope"), v.get("calibration_in_the_large")
        if not _missing(auroc) and not _missing(home) and home - auroc > HOLDS_AUROC_DROP:
            problems.append(f"AUROC {_fmt(auroc)} against {_fmt(home)} on this site's held-out split")
        if not _missing(slope) and not HOLDS_SLOPE[0] <= slope <= HOLDS_SLOPE[1]:
            problems.append(f"calibration slope {_fmt(slope)} ({'risks too extreme' if slope < 1 else 'risks too moderate'})")
        if not _missing(citl) and abs(citl) > HOLDS_CITL:
            problems.append(f"calibration-in-the-large {_fmt(citl)} (risks too {'high' if citl < 0 else 'low'} on average)")
        if not problems:
            continue
        if v.get("design") == "temporal":
            out.append(f"Over time the model did not hold: trained on the earlier times and tested on the later ones, "
                       f"{', '.join(problems)} ({section}). Recalibrate or retrain on recent data before relying on its "
                       "risks.")
        else:
            out.append(f"At {v.get('eval_site', 'the other site')} (external validation, {section}) the model as shipped "
                       f"did not hold: {', '.join(problems)}. Recalibrate it there (its row after recalibration) or "
                       "train with that site's data before using it there.")
    return out


def _recalibrated_text(shipped: dict, recal: dict | None) -> str:
    """A validation row's "after local recalibration" cell: the model's metrics after its
    calibrator was refitted on the validating site's tuning split (the method chosen
    there by cross-validated Brier against the shipped calibrator's, ``shipped`` when none
    beat it, ``none`` when the uncalibrated risks did best), and
    a caveat when that made the held-out Brier score worse than as shipped (the tuning
    rows' calibrator did not carry over to the held-out rows)."""
    if _missing(shipped.get("auroc")):
        return "–"
    if not recal:
        return "not recalibrated"
    parts = [
        f"{label} {_fmt(recal.get(key), digits)}"
        for key, label, digits in (
            ("auroc", "AUROC", 3),
            ("brier", "Brier", 4),
            ("calibration_slope", "slope", 3),
            ("calibration_in_the_large", "CITL", 3),
        )
        if recal.get(key) is not None
    ]
    text = ", ".join(parts) or "–"
    method = recal.get("method")
    if method == "shipped":  # no calibrator fitted here beat the model's own on the tuning split's Brier
        return f"{text} (kept as shipped: no calibrator fitted on this site's tuning split beat the model's own there)"
    if method == "none":  # the uncalibrated risks beat every calibrator, the shipped one included
        return (f"{text} (the model's uncalibrated risks: on this site's tuning split they beat every calibrator "
                "fitted there and the model's own)")
    if method:
        text = f"{method}: {text}"
    before, after = shipped.get("brier"), recal.get("brier")
    if not _missing(before) and not _missing(after) and round(after, 4) > round(before, 4):
        text += " (Brier worse than as shipped: the calibrator refitted on the tuning split did not carry over)"
    return text


def _events_text(rec: dict) -> str:
    """An evaluation set's events for display: "withheld" where they were withheld because
    the non-events are 1..10 (``metrics.evaluate``'s ``few_non_events``), else as counts are."""
    return WITHHELD if rec.get("events") is None and rec.get("few_non_events") else _count(rec.get("events"))


def _size_text(rec: dict) -> str:
    """A validation row's held-out rows and events, and the event rate where both show."""
    if "n" not in rec:  # a design that did not run (or a model that was not trained)
        return "–"
    n, events = rec.get("n"), rec.get("events")
    text = f"{_count(n)} / {_events_text(rec)}"
    if n is not None and events is not None and n >= privacy.MIN_CELL and events >= privacy.MIN_CELL:
        text += f" ({events / n:.1%})"
    return text


def _validations(m: dict, site: str, validations: list[dict] | None, trained_at: str | None = None,
                 recalibrated: dict | None = None) -> list[dict]:
    """Section 12's rows: this run's held-out split first (for the network's model,
    ``recalibrated``: its metrics here after recalibration on this site's tuning split),
    then ``validations``."""
    held = m["held_out"][PRIMARY] | {
        k: v
        for k, v in m.get("calibration_stats", {}).get(PRIMARY, {}).items()
        if k not in m["held_out"][PRIMARY]
    }
    rows = [
        {
            "design": DESIGNS["network"] if trained_at else DESIGNS["internal"],
            "train_site": trained_at or site,
            "eval_site": site,
            "size": _size_text(held),
            "auroc": _ci(held, "auroc"),
            "model_based": "–" if held.get("withheld") else _fmt(held.get("model_based_auroc")),
            "auprc": _fmt(held.get("auprc")),
            "brier": _fmt(held.get("brier"), 4),
            "slope": _fmt(held.get("calibration_slope")),
            "citl": _fmt(held.get("calibration_in_the_large")),
            "recalibrated": _recalibrated_text(held, recalibrated) if trained_at else "–",
            "note": "this run's held-out split",
        }
    ]
    for v in validations or []:
        note = str(v.get("note") or "")
        if v.get("run_id"):
            note = f"{note} (MLflow run {v['run_id']})".strip()
        design = str(v.get("design", "external"))
        rows.append(
            {
                "design": DESIGNS.get(design, design),
                "train_site": str(v.get("train_site", "–")),
                "eval_site": str(v.get("eval_site", "–")),
                "size": _size_text(v),
                "auroc": _ci(v, "auroc"),
                "model_based": "–" if v.get("withheld") else _fmt(v.get("model_based_auroc")),
                "auprc": _fmt(v.get("auprc")),
                "brier": _fmt(v.get("brier"), 4),
                "slope": _fmt(v.get("calibration_slope")),
                "citl": _fmt(v.get("calibration_in_the_large")),
                "recalibrated": _recalibrated_text(v, v.get("recalibrated")),
                "note": note or "–",
            }
        )
    return rows


def _calibrator_hurt(m: dict) -> str | None:
    """A limitation when the calibrator, fitted on the tuning split, left the held-out
    risks less well calibrated than the model's raw risks (a higher Brier score there):
    chosen on other rows, it need not carry over."""
    stats = m.get("calibration_stats", {})
    calibrated, raw = stats.get(PRIMARY) or {}, stats.get(UNCALIBRATED) or {}
    before, after = raw.get("brier"), calibrated.get("brier")
    if _missing(before) or _missing(after) or round(after, 4) <= round(before, 4):
        return None
    citl = ""
    if not _missing(calibrated.get("calibration_in_the_large")) and not _missing(raw.get("calibration_in_the_large")):
        citl = (f"; calibration-in-the-large {_fmt(calibrated['calibration_in_the_large'])} against "
                f"{_fmt(raw['calibration_in_the_large'])}")
    return (f"On the held-out split the calibrator fitted on the tuning split left the risks less well calibrated than "
            f"the model's raw ones (Brier {_fmt(after, 4)} against {_fmt(before, 4)}{citl}; section 8 shows both): "
            "it did not carry over from the tuning rows, so treat the absolute risks with caution.")


def _between_sites(held: dict, site: str, validations: list[dict]) -> dict | None:
    """The network report's summary of its model's AUROC across the sites
    (:func:`metrics.between_sites`): this site's held-out split and the others'."""
    summary = metrics.between_sites([{"site": site, **held}, *({"site": v.get("eval_site"), **v} for v in validations)])
    if summary is None:
        return None
    i2 = summary["i2"]
    return {
        "sites": len(summary["sites"]),
        "range": f"{_fmt(summary['auroc_min'])} to {_fmt(summary['auroc_max'])}",
        "pooled": f"{_fmt(summary['pooled_auroc'])} ({_fmt(summary['pooled_ci_low'])}–{_fmt(summary['pooled_ci_high'])})",
        "q": f"{summary['q']:.2f}",
        "q_p": f"{summary['q_p']:.2f}" if summary["q_p"] >= 0.01 else "<0.01",
        "i2": f"{i2:.0%}",
        "tau2": f"{summary['tau2']:.3f}",
        "prediction": None if summary["prediction_low"] is None
        else f"{_fmt(summary['prediction_low'])}–{_fmt(summary['prediction_high'])}",
        "differ": summary["q_p"] < 0.05,
    }


def _characteristics(m: dict) -> dict | None:
    """Section 3's table of the participants' characteristics (already under the rule of
    11 in ``metrics.json``; see :mod:`forewarn.evaluation.characteristics`)."""
    record = m.get("characteristics")
    if not record:
        return None

    def count(value: int | None) -> str:
        return SUPPRESSED if value is None else f"{value:,}"

    def cell(kind: str, c: dict) -> str:
        if c["status"] == "withheld":
            return WITHHELD
        if c["status"] == "suppressed":
            return SUPPRESSED
        if kind == "recorded":
            if c["pct"] is None:
                return count(c["n"])
            return _pct(c["pct"]) if c["n"] is None else f"{c['n']:,} ({_pct(c['pct'])})"
        return "–" if c.get("mean") is None else f"{c['mean']:.1f} ({c['sd']:.1f})"

    labels = {("development", True): "development, with the outcome", ("development", False): "development, without",
              ("held_out", True): "held-out, with the outcome", ("held_out", False): "held-out, without"}
    return {
        "groups": [{"label": labels[(g["split"], g["outcome"])],
                    "rows": WITHHELD if g.get("rows_status") == "withheld" else count(g["rows"]),
                    "subjects": WITHHELD if g.get("subjects_status") == "withheld" else count(g["subjects"])}
                   for g in record["groups"]],
        "rows": [{"label": r["label"], "cells": [cell(r["kind"], c) for c in r["cells"]],
                  "smd": _fmt(r["smd"], 2)} for r in record["rows"]],
        "top": record["top"],
    }


# The earlier pull's counts are not published beside tonight's (that night may have
# published nothing, and the difference would count the people who changed): a change
# is shown to the nearest 10% only where both pulls kept this many rows, so that the
# rounding hides 55 rows or more; else only whether it reached the alert.
COARSE_ROWS = 1_100


def _pull_change_text(c: dict) -> str:
    before, now = c["previous"], c["now"]
    if before == 0:
        return "–" if now == 0 else "new"
    if now == 0:
        return "emptied"
    if min(before, now) >= COARSE_ROWS:
        return f"about {10 * round(c['change'] * 10):+d}%"
    return f"{PULL_CHANGE_ALERT:.0%} or more" if c["flagged"] else f"under {PULL_CHANGE_ALERT:.0%}"


def _promotion(promotion: dict | None, candidate: dict | None = None) -> dict | None:
    """The promotion section; ``candidate`` is this run's model's held-out record, shown
    beside the champion's on the same rows when the flow scored the champion."""
    if not promotion:
        return None
    champion = promotion.get("champion_version")
    beside = []
    if promotion.get("champion_metrics") and candidate is not None:
        version = promotion.get("version")
        for name, rec in ((f"this run's model{f' (v{version})' if version else ''}", candidate),
                          (f"champion v{champion}", promotion["champion_metrics"])):
            beside.append({"name": name, "auroc": _ci(rec, "auroc"), "auprc": _ci(rec, "auprc"),
                           "brier": _fmt(rec.get("brier"), 4), "slope": _fmt(rec.get("calibration_slope")),
                           "citl": _fmt(rec.get("calibration_in_the_large"))})
    return {
        "beside": beside,
        "promoted": bool(promotion.get("promoted")),
        # The model is the champion itself (the same trees): nothing was decided nor registered.
        "unchanged": bool(promotion.get("unchanged")),
        "decision": str(
            promotion.get("decision")
            or ("promoted to champion" if promotion.get("promoted") else "kept as challenger")
        ),
        "reasons": [str(r) for r in promotion.get("reasons") or []],
        "champion_version": "none yet" if champion is None else f"v{champion}",
        "version": None if promotion.get("version") is None else f"v{promotion['version']}",
    }


def _drift(drift: dict | None) -> dict:
    """The drift section from :func:`forewarn.evaluation.drift.assess`'s record,
    ``{"compare": comparison or None, "decision": ...}``; None or ``{}`` when the run made
    no drift check."""
    drift = drift or {}
    decision = drift.get("decision") or {}
    record = drift.get("compare")
    action = str(decision.get("action", "retrain"))
    meaning = str(decision.get("meaning") or ACTIONS.get(action, ""))
    reasons = [str(r) for r in decision.get("reasons") or []]
    out: dict = {
        "compared": bool(record),
        "no_champion": not decision or reasons == ["no champion"],
        "decided": bool(decision),
        "action": action,
        "meaning": meaning[:1].upper() + meaning[1:],
        "drifted": bool(decision.get("drifted")),
        "reasons": reasons,
    }
    if not out["compared"]:
        return out
    policy = decision.get("policy") or record.get("policy") or {}
    psi_threshold = policy.get("psi_threshold")
    prevalence_change = policy.get("prevalence_change")
    churn = policy.get("churn_threshold")

    def status(f: dict) -> str:
        # A withheld PSI (a new bin of 1 to 10 rows): only its drifted flag is shown.
        if f.get("psi_withheld"):
            return "drifted" if f.get("drifted") else "not drifted"
        value = f.get("psi")
        if _missing(value):
            return "–"
        if psi_threshold is not None and value > psi_threshold:
            return "drifted"
        return "moderate" if value > MODERATE_PSI else "stable"

    prev, vocab, n_rows = record["prevalence"], record["vocabulary"], record.get("n_rows") or {}
    change = prev.get("relative_change")
    split = record.get("split", "all")
    withheld = sum(1 for f in record.get("features") or [] if f.get("psi_withheld"))
    out |= {
        "split": "every labelled prediction time of the new pull"
        if split == "all"
        else f"the {SPLIT_LABELS.get(split, split)} split's prediction times of the new pull",
        "rows": {"reference": _count(n_rows.get("reference")), "new": _count(n_rows.get("new"))},
        "max_psi": WITHHELD if record.get("max_psi") is None and withheld else _fmt(record.get("max_psi")),
        "withheld": withheld,
        "psi_threshold": "–" if psi_threshold is None else f"{psi_threshold:g}",
        "moderate_psi": f"{MODERATE_PSI:g}",
        "features": [
            {
                "rank": k,
                "description": str(f.get("description") or f["name"]),
                "name": str(f["name"]),
                "psi": WITHHELD if f.get("psi_withheld") else _fmt(f.get("psi")),
                "status": status(f),
            }
            for k, f in enumerate(record.get("features") or [], start=1)
        ],
        "skipped": [
            {"name": str(s["name"]), "reason": str(s.get("reason", ""))}
            for s in record.get("skipped") or []
        ],
        "prevalence": {
            "reference": _pct(prev.get("reference"), 2),
            "new": _pct(prev.get("new"), 2),
            "change": "–" if _missing(change) else f"{100 * change:+.1f}%",
            "limit": "–" if prevalence_change is None else f"±{100 * prevalence_change:.0f}%",
        },
        "vocabulary": {
            "champion": f"{int(vocab['champion']):,}",
            "current": f"{int(vocab['current']):,}",
            "lost": _pct(vocab.get("lost")),
            "new": _pct(vocab.get("new")),
            "jaccard": _fmt(vocab.get("jaccard")),
            "limit": "–" if churn is None else f"{100 * churn:.0f}%",
            "lost_codes": ", ".join(vocab.get("lost_codes") or []),
            "new_codes": ", ".join(vocab.get("new_codes") or []),
        },
        "eps": f"{record.get('eps', 1e-4):g}",
    }
    return out


def _prediction_times(task) -> str:
    pt = task.prediction_times
    if getattr(pt, "at_codes", None):
        where = f"every event of {', '.join(pt.at_codes)}"
    elif getattr(pt, "at_first_of", None):
        where = f"the first event of any of {', '.join(pt.at_first_of)}"
    elif getattr(pt, "every_days", None):
        where = f"every {pt.every_days} days from the first eligible day"
    else:
        where = "task-defined times"
    among = (" among the times the age and prior-observation criteria keep, the other exclusions applied to the drawn "
             "times (people count in proportion to their times at risk)"
             if getattr(pt, "sample_from", "eligible") == "population" else "")
    return f"{where}; at most {pt.max_per_subject} per subject, chosen by a seeded hash{among}"


def _value_criteria(task) -> list[str]:
    out = []
    for v in task.outcome.values:
        key, value = v.bound
        bound = f"{key.replace('_', ' ')} {value:g}"
        if v.times == 1:
            times = "once"
        elif v.min_days_apart:
            times = f"{v.times} times, at least {v.min_days_apart} days apart"
        else:
            times = f"{v.times} times (a later result confirms the first)"
        out.append(f"{v.code} {bound}, {times}")
    return out


def _agg_text(aggs: list[str]) -> str:
    return ", ".join(f"{a} ({AGG_NAMES[a]})" if a in AGG_NAMES else a for a in aggs)


# ------------------------------------------------------------------------- context


def _guard_text(guard: dict | None) -> str:
    """The blend guard's clause for the model section: the other metric's floor (the
    L1-logistic alone) and the weights it ruled out."""
    if not guard:
        return ""
    metric = {"auroc": "AUROC", "auprc": "AUPRC"}[guard["metric"]]
    text = f", among the weights whose {metric} there is at least the L1-logistic's alone ({guard['l1']:.3f})"
    excluded = guard.get("excluded") or []
    if excluded:
        text += f"; that ruled out {', '.join(excluded)}"
    return text


def _rule_text(rule: dict | None, metric: str, weight: float) -> str:
    """The one-standard-error rule's clause for the model section (``blend_rule`` one_se):
    the best weight and the one taken."""
    if not rule:
        return ""
    best = float(rule["best"])
    if weight == best:
        return f"; no larger weight's {metric} lies within one standard error of the best's"
    return (f"; the best there was {best:.1f}, and the model takes {weight:.1f}, the largest weight whose {metric} lies "
            "within one standard error (patient bootstrap) of the best's: the nearest the L1-logistic that the rows "
            "cannot tell from the best")


# What only a study's authors can state (the study file's ``reporting`` section), by the
# TRIPOD+AI topic the report's checklist names.
REPORTING_TOPICS = {
    "ethics": "Ethics approval (committee and reference) or why none was needed",
    "registration": "Registration and protocol",
    "funding": "Funding and the funders' role",
    "conflicts_of_interest": "Conflicts of interest",
    "public_involvement": "Patient and public involvement",
    "data_availability": "Data and code availability",
}


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _stated(reporting: dict | None) -> dict:
    """The intended use and the study's statements, and the topics (lower case) still missing."""
    reporting = reporting or {}
    statements = [dict(s) for s in reporting.get("statements") or [
        {"field": k, "topic": t, "text": None} for k, t in REPORTING_TOPICS.items()]]
    missing = [] if reporting.get("intended_use") else ["the model's intended use"]
    missing += [s["topic"].split(" (")[0].lower() for s in statements if not s.get("text")]
    return {"intended_use": reporting.get("intended_use"), "statements": statements, "missing": missing}


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
    validations: list[dict] | None = None,
    promotion: dict | None = None,
    drift: dict | None = None,
    recalibrated: dict | None = None,
    reporting: dict | None = None,
    previous_pull: dict | None = None,
) -> dict:
    """Everything the report template shows, with every count passed through suppression.

    ``validations`` lists further validation designs of this site's model (each a dict
    with design, train_site, eval_site, auroc, auroc_ci_low, auroc_ci_high, auprc,
    brier, calibration_slope, calibration_in_the_large, recalibrated (a dict of the same
    metrics or None) and note); ``promotion`` is the promotion rule's outcome (decision,
    promoted, reasons, champion_version); ``drift`` is the drift check before retraining,
    :func:`forewarn.evaluation.drift.assess`'s ``{"compare": ..., "decision": ...}``
    (``compare`` None when there was nothing to compare), or None when no check ran.
    The network's model's report: ``validations`` are the same model at the other sites
    and ``recalibrated`` its metrics here after recalibration on this site's tuning split
    (``external_validation``'s ``recalibrated`` record). ``reporting`` is what only the
    study's authors can state (``Reporting.for_task``: ``intended_use`` and
    ``statements``, each a dict with field, topic and text, None where unstated); a
    report without them says so in its limitations.
    """
    m = evaluation.load_metrics()
    labels = model_labels(training)

    flow = _participants(attrition)

    # Splits add up to the labelled rows; the held-out counts are also in the models table,
    # so complementary suppression spares them.
    split_names = [s for s in schema.SPLITS if s in training["rows"]]
    spare = tuple(i for i, s in enumerate(split_names) if s == schema.HELD_OUT)
    split_rows = _protect([training["rows"][s] for s in split_names], spare=spare)
    split_pos = _protect([training["positives"][s] for s in split_names], spare=spare)
    splits = [
        {
            "name": SPLIT_LABELS.get(s, s),
            "rows": r,
            "positives": p,
            "prevalence": _pct(training["positives"][s] / training["rows"][s])
            if _shown_int(r) and _shown_int(p) and training["rows"][s]
            else "–",
        }
        for s, r, p in zip(split_names, split_rows, split_pos, strict=True)
    ]
    n_train_pos = training["positives"].get(schema.TRAIN, 0)
    train_pos_text = dict(zip(split_names, split_pos, strict=True)).get(
        schema.TRAIN, _count(n_train_pos)
    )
    n_features = int(features_shape["columns"])

    # Data source: kept + quarantined = read, per table; quarantine reasons add up too.
    # With a quarantine count of 1..10 anywhere, subtraction across tables, subjects and
    # events could give it back: the per-table counts are withheld (as in quality.json).
    tables_withheld = bool(pull_report["tables"]) and all(
        v["read"] is None for v in table_counts(pull_report)[0].values()
    )
    tables, reasons = [], []
    for name, t in pull_report["tables"].items():
        kept, quarantined = _protect([t["kept"], t["quarantined"]])
        read = _count(t["read"])
        if tables_withheld:
            read = kept = quarantined = WITHHELD
        tables.append({"name": name, "read": read, "kept": kept, "quarantined": quarantined})
        why = t.get("reasons") or {}
        shown = [WITHHELD] * len(why) if tables_withheld else _protect(list(why.values()))
        for (reason, _), rows in zip(why.items(), shown, strict=True):
            reasons.append({"table": name, "reason": reason, "rows": rows})

    # Since the site's previous pull with other data (``previous_pull``: its date and its
    # report's table counts): kept rows per table, where both pulls publish them.
    changes = [] if previous_pull is None else pull_changes(previous_pull, pull_report)
    pull_change = None if previous_pull is None else {
        "date": previous_pull.get("date", "an earlier night"),
        "withheld": not changes,
        "tables": [{"table": c["table"], "now": _count(c["now"]), "change": _pull_change_text(c), "flagged": c["flagged"]}
                   for c in changes],
        "alert": f"{PULL_CHANGE_ALERT:.0%}",
        "coarse": f"{COARSE_ROWS:,}",
    }

    xgb = training["xgboost"]
    params = xgb.get("params", {})
    calib = training.get("calibration") or {}
    l1 = training.get("l1_logistic") or {}
    age_sex = training.get("age_sex") or {}
    spw = xgb.get("scale_pos_weight")
    if spw is None:
        weighting = "not recorded"
    elif spw == 1.0:
        weighting = "none (scale_pos_weight = 1: rows are not reweighted, so predicted risks stay on the outcome's own scale)"
    else:
        weighting = f"scale_pos_weight = {spw:.2f} (negatives / positives in the train split, as the study's class_weight asks)"
    rare = xgb.get("rare_outcome_defaults") or {}
    if rare:
        weighting += "; rare-outcome settings (train prevalence under 2%): " + ", ".join(f"{k} {v}" for k, v in rare.items())
    count = xgb.get("tree_count") or {"method": "tuning"}
    network = training.get("federated")
    trees_text = (
        f"the tree count chosen by early stopping on the mean log-loss of {count.get('folds')} subject-grouped folds of the "
        "train split (the tuning split had fewer than 100 events), then one fit on all of train"
        if count.get("method") == "cv"
        else "after early stopping on the tuning split's log-loss"
    )
    if network:
        trees_text = (
            f"trained across the sites {', '.join(network['sites'])} without moving rows: the model visited the sites in "
            f"turn ({network['visits']} visits), each adding {network['rounds_per_visit']} trees fitted to its own train "
            f"rows, and the tree count was chosen by early stopping on the pooled tuning log-loss of "
            f"{', '.join(network['tuning_sites'])} (only the model and sums over at least {privacy.MIN_CELL} rows, events "
            "and non-events left a site)" + _boundary_text(network.get("boundary")) + ". The L1-logistic and age + sex "
            "baselines below are this site's own, fitted on its train rows in the network's columns")
    release_text = _release_text(xgb.get("release"), bool(network),
                                 xgb["best_iteration"] + 1 if xgb.get("best_iteration") is not None else None)
    offset = xgb.get("offset") or {"method": "none"}
    offset_text = (
        f"The trees boost from an offset: every row starts at the L1-logistic's log-odds (the baseline below, C = "
        f"{offset.get('C')}; for the train rows out-of-fold, from {offset.get('folds')} subject-grouped folds, so no "
        "row's starting point has seen its own label), and the trees learn what the linear model misses. The registered "
        "model holds both, and each feature's SHAP value below is its trees' part plus its linear part."
        if offset.get("method") == "l1" else ""
    )
    blend = xgb.get("blend") or {"weight": 0.0}
    metric = {"auroc": "AUROC", "auprc": "AUPRC"}.get(blend.get("objective"), "objective")
    where = ({"tuned": "the tuning split",
              "crossfit": (f"the tuning rows and the train rows' out-of-fold log-odds ({blend.get('folds')} subject folds; "
                           f"{blend.get('rows', 0):,} rows)")}.get(blend.get("method")))
    blend_text = ""
    if blend.get("weight"):
        w = float(blend["weight"])
        how = (f"chosen by the {metric} on {where} from 0, 0.1, ..., 1{_guard_text(blend.get('guard'))}"
               f"{_rule_text(blend.get('rule'), metric, w)}" if where else "as the study sets it")
        blend_text = (
            f"The registered model blends the trees with the L1-logistic baseline: its log-odds are {1 - w:.1f} x the "
            f"trees' plus {w:.1f} x the L1-logistic's (weight {w:.1f} on the L1, {how}), so "
            "the tree model keeps the linear model's ranking where the trees alone rank no better. Every number in this "
            "report is the blend's, and its SHAP values are the same blend of the two parts' values."
        )
        if w >= 1.0:
            rows = where or "the rows it was chosen on"
            gain = ("the trees' gain over its ranking lies within one standard error"
                    if float((blend.get("rule") or {}).get("best", 1.0)) < 1.0 else "the trees did not improve its ranking")
            blend_text += (f" With weight 1 the model scores as the L1-logistic alone: on {rows} {gain}, so the trees "
                           "are kept but carry no weight.")
    elif (blend.get("rule") or {}).get("name") == "constant_l1":
        blend_text = ("The L1-logistic kept no column at its C and scores every row alike, so it was not blended in: "
                      "the trees score alone.")
    elif where:
        blend_text = f"Blending with the L1-logistic did not improve the {metric} on {where}: the trees score alone."
    search = training.get("search") or {}
    trials = search.get("trials") or []
    search_context = None
    if trials:
        complete = [t for t in trials if t.get("state") == "complete"]
        best = max(complete, key=lambda t: t["value"]) if complete else None
        search_context = {
            "objective": {"auroc": "tuning AUROC", "auprc": "tuning AUPRC"}.get(search.get("objective"), search.get("objective")),
            "trials": len(trials),
            "pruned": len(trials) - len(complete),
            "best_trial": best["trial"] if best else "–",
            "best_value": _fmt(best["value"]) if best else "–",
            "rows": [
                {"trial": t["trial"], "state": t["state"], "value": _fmt(t.get("value")), "chosen": best is not None and t is best,
                 "params": ", ".join(f"{k} {_fmt(v) if isinstance(v, float) else v}" for k, v in t["params"].items())}
                for t in trials
            ],
        }
    method = calib.get("method", "none")
    cv_brier = calib.get("tuning_cv_brier") or {}
    calibration_text = {
        "none": "none: no calibrator's cross-validated Brier score on the tuning split beat the raw scores' by more than one standard error, so the model's raw probabilities are used as they are",
        "isotonic": "isotonic regression fitted on the tuning split (its cross-validated Brier score beat the simpler candidates' by more than one standard error)",
        "sigmoid": "sigmoid (Platt) scaling fitted on the tuning split (its cross-validated Brier score beat the raw scores' by more than one standard error, and isotonic's did not beat it by more)",
    }.get(method, method)
    if network:
        calibration_text = (
            "sigmoid (Platt) scaling fitted on the pooled tuning rows of the sites (Newton steps on their summed "
            "gradients), kept because its cross-validated pooled Brier score was lower than none's by more than one "
            "standard error" if method == "sigmoid" else
            "none: a Platt scaling fitted on the pooled tuning rows did not lower the cross-validated pooled Brier score "
            "by more than one standard error")

    # Warnings from training, with any count that this report withholds replaced.
    warnings = [str(w) for w in training.get("warnings") or []]
    size = training.get("sample_size")  # absent from a record that predates it
    # Train subjects with the outcome equal the train events when a subject has one row, so
    # they are withheld with them.
    size_shown = bool(size) and _shown_int(train_pos_text)
    if not _shown_int(train_pos_text):
        shown = "a withheld number of" if train_pos_text == WITHHELD else train_pos_text
        hidden = {n_train_pos} | ({size["event_subjects"]} if size else set())
        for number in hidden:
            warnings = [re.sub(rf"\b{number}\b", shown, w) for w in warnings]

    held = m["held_out"][PRIMARY]
    validations = [dict(v) for v in validations or []]
    # The network's own report: ``validations`` are the same model at the other sites, not
    # further designs of a site's model.
    # (a registered model from outside the study, validated here, is a comparator: no design of this model)
    registered = [v for v in validations if v.get("design") == "registered" and not v.get("skipped")]
    external = [] if network else [v for v in validations if v.get("design", "external") not in ("internal", "registered")]
    # a design that was asked for but could not run (its row says why) validates nothing
    skipped = sorted({str(v.get("design")) for v in external if v.get("skipped")})
    external = [v for v in external if not v.get("skipped")]
    lead = _lead_time(m)
    subgroup_rows = _subgroups(m, site, validations, network=bool(network))

    limitations = []
    if size and size.get("events_per_feature_used") is not None and size["events_per_feature_used"] < MIN_EVENTS_PER_FEATURE:
        events_text = f"{size['event_subjects']:,}" if size_shown else train_pos_text
        limitations.append(
            f"Few training subjects with the outcome ({events_text}) for the {size['features_used']:,} features the model "
            f"uses (fewer than the {MIN_EVENTS_PER_FEATURE} per feature usually asked of a regression model): expect "
            "optimism in single features' effects and unstable importances and explanations."
        )
    elif not size and n_train_pos < 10 * max(1, n_features // 50):
        limitations.append(
            f"Few training events ({train_pos_text}) for {n_features:,} candidate features: expect optimism and unstable importances."
        )
    if held.get("events") is not None and held["events"] < 100:
        limitations.append(
            f"The held-out split has {_count(held['events'])} events, fewer than the 100 usually asked of a validation: "
            "the confidence intervals are wide and calibration estimates are imprecise."
        )
    if external:
        designs = sorted({str(v.get("design", "external")) for v in external})
        limitations.append(
            f"Validation designs beyond internal: {', '.join(designs)} (section 12); other populations and later periods still need their own check."
        )
        limitations.extend(_did_not_hold(external, held))
    elif network:
        limitations.append(
            f"This is the network's model on this site's held-out subjects; it was trained with the rows of "
            f"{', '.join(s for s in network['sites'] if s != site) or 'no other site'} as well, so no site here is external "
            "to it. Each site's own report compares it with that site's model (section 12 there)."
        )
    else:
        limitations.append(
            "Internal validation only (held-out subjects of the same site): "
            + (f"the {' and '.join(skipped)} validation could not run (section 12 says why)." if skipped
               else "no temporal or external validation ran for this model.")
        )
    if network:
        limitations.append(
            "Probabilities are calibrated on the pooled tuning rows of all the sites; at one site they may need recalibration "
            "(each site's report gives the model's numbers after recalibration on that site's tuning split)."
        )
    elif method == "none":
        limitations.append(
            "Probabilities are not recalibrated; see the calibration section before using them as absolute risks."
        )
    else:
        limitations.append(
            f"Probabilities are recalibrated ({method}) on the tuning split of this site; at another site they may need recalibration."
        )
    worse = _calibrator_hurt(m)
    if worse and method != "none":
        limitations.append(worse)
    raw_subgroups = m.get("subgroups") or []
    audited = {r.get("group") for r in raw_subgroups}
    if raw_subgroups and not {"race", "ethnicity"} <= audited:
        limitations.append(
            "Race and ethnicity were not available to this evaluation, so fairness across them is not assessed here."
        )
    elif raw_subgroups and all(r.get("level") is None for r in raw_subgroups if r.get("group") in ("race", "ethnicity")):
        limitations.append(
            "Race and ethnicity are not recorded in this site's data, so fairness across them is not assessed."
        )
    if any(r["suppressed"] for r in subgroup_rows):
        limitations.append(
            "Some subgroups are too small to report (fewer than 11 subjects, events or non-events): fairness across them is not shown."
        )
    if getattr(task.prediction_times, "max_per_subject", 1) == 1:
        limitations.append(
            "One prediction time per subject: lead time is the time from that single visit's alert to the outcome, not from a running alert series."
        )
    drift_section = _drift(drift)
    if drift_section["compared"] and drift_section["drifted"]:
        limitations.append(
            f"The new data drifted from the data the champion was trained on (section 14; policy action “{drift_section['action']}”): "
            "compare the two models on the same held-out rows before relying on either."
        )
    if (attrition.get("censored") or {}).get("times"):
        limitations.append(
            "Prediction times not observed for the whole horizon were excluded (section 3, “censored”; complete-case "
            "labelling, as PatientLevelPrediction's requireTimeAtRisk"
            + ("; those with the outcome too unless a death ended the record (the task's follow_up “everyone”), so that "
               "the last years of the data are not labelled positive only"
               if getattr(task, "follow_up", "everyone") == "everyone" else
               "; those with the outcome were kept whatever their follow-up (the task's follow_up “negatives”), so the "
               "last horizon of each record holds positives only, which a model can learn as risk")
            + "): people lost to follow-up, or who died first without the outcome, are not represented, and the "
            "observed rate can differ from the risk in the whole cohort."
        )
    shift = (pull_report.get("deid") or {}).get("max_shift_days")
    limitations.append(
        "Dates are shifted per subject for de-identification"
        + (f" (up to ±{shift} days)" if shift else "")
        + ", so calendar effects (season, coding changes) are blurred"
        + (", and so is the temporal validation's cutoff: a subject's times move together, but across subjects a "
           "calendar date is known only to within the shift." if any(v.get("design") == "temporal" for v in external) else ".")
    )
    limitations.append(
        "Between nights: this site publishes a night only when 0 or 11 or more people changed since each night it "
        "published before, in its pull and in this task's labels (by outcome and split, the temporal design's too, "
        "and by the held-out subgroups' age bands, sexes, races and ethnicities); finer cells (a calibration bin, a threshold's alerts) "
        "can still differ by 1 to 10 between two published nights."
    )
    stated = _stated(reporting)
    if stated["missing"]:
        limitations.append(
            f"The study file does not state {_join(stated['missing'])} (its “reporting” section): the site completes "
            "them before a reviewer signs."
        )
    limitations.append(
        "Synthetic demo data: performance says nothing about a real population."
        if pull_report.get("demo")
        else "Performance holds for the population and coding practice of this site; check it before use elsewhere."
    )

    images = {f.stem: f.read_bytes() for f in sorted((evaluation.dir / "figures").glob("*.png"))}
    return {
        "site": site,
        "task": {
            "name": task.name,
            "description": task.description,
            "outcome_codes": ", ".join(task.outcome.codes) or "–",
            "outcome_values": _value_criteria(task),
            "prediction_times": _prediction_times(task),
            "min_age": f"{task.population.min_age_years:g}",
            "max_age": f"{task.population.max_age_years:g}",
            "prior_days": task.population.min_prior_observation_days,
            "gap_days": task.gap_days,
            "horizon_days": task.horizon_days,
            "split": _split_text(task),
        },
        "task_digest": task.digest(),
        "data_digest": data_digest,
        "code_version": code_version,
        "generated_at": generated_at,
        "mlflow_run_id": mlflow_run_id,
        "models": _models(m, labels),
        "trees_label": labels.get(TREES, TREES),
        "primary": {
            "name": labels[PRIMARY],
            "auroc": _ci(held, "auroc"),
            "auprc": _ci(held, "auprc"),
            "slope": _fmt(held.get("calibration_slope")),
            "withheld": bool(held.get("withheld")),
        },
        "decision": decision,
        "warnings": warnings,
        "data": {
            "pull_change": pull_change,
            "tables": tables,
            "tables_withheld": tables_withheld,
            "reasons": reasons,
            "subjects": _count(pull_report["subjects"]),
            "events": _count(pull_report["events"]),
            "ages_capped": _count(pull_report.get("ages_capped_at_90"))
            if pull_report.get("ages_capped_at_90") is not None
            else "–",
            "max_shift_days": (pull_report.get("deid") or {}).get("max_shift_days", "–"),
            "time_span": " to ".join(str(x) for x in privacy.month_span(pull_report["time_span"])),
            "source": ", ".join(
                f"{k} {v}" for k, v in pull_report.get("source", {}).items() if k != "location"
            )
            or "–",
            "demo": bool(pull_report.get("demo")),
            "top_codes": [
                {
                    "code": c["code"],
                    "events": _count(c["events"]),
                    "subjects": _count(c["subjects"]),
                }
                for c in quality["top_codes"][:10]
            ],
            "implausible": [
                {
                    "code": v["code"],
                    "count": _count(v["values"]),
                    "outside": _count(v["outside"]),
                    "bounds": f"{v['bounds'][0]:g}–{v['bounds'][1]:g}",
                }
                for v in quality["values_outside_plausible_range"]
            ],
        },
        "flow": flow,
        "splits": splits,
        "epv_network": {"value": f"{network['train_events'] / n_features:.2f}", "events": f"{network['train_events']:,}",
                        "sites": ", ".join(network.get("count_sites") or network["sites"])}
        if network and network.get("train_events") and n_features else None,
        "epv": f"{n_train_pos / n_features:.2f}"
        if n_features and _shown_int(train_pos_text)
        else "–",
        "epv_used": None if not size or size.get("events_per_feature_used") is None else {
            "value": f"{size['events_per_feature_used']:.2f}" if size_shown else "–",
            "events": f"{size['event_subjects']:,}" if size_shown else train_pos_text,
            "used": f"{size['features_used']:,}"},
        "features": {
            "columns": f"{n_features:,}",
            "nonzeros": f"{int(features_shape['nonzeros']):,}",
            "rows": f"{int(features_shape['rows']):,}" if features_shape.get("rows") else "–",
            "density": _pct(features_shape["nonzeros"] / (features_shape["rows"] * n_features), 2)
            if features_shape.get("rows") and n_features
            else "–",
            "windows": ", ".join(feature_config.windows),
            "aggs": _agg_text(list(feature_config.aggs)),
            "min_code_subjects": getattr(feature_config, "min_code_subjects", "–"),
            "min_code_frequency": getattr(feature_config, "min_code_frequency", 0.0),
            "rollup_icd10": bool(getattr(feature_config, "rollup_icd10", False)),
            "parent_codes": bool(getattr(feature_config, "parent_codes", False)),
            "audit_vocabularies": _join(list(getattr(feature_config, "audit_vocabularies", None) or [""])),
        },
        "model": {
            "role": "the network's model (one model trained across the sites, registered as the network's own model, apart from "
            "each site's)"
            if network else "the registered model",
            "network": bool(network),
            "trees": xgb["best_iteration"] + 1,
            "trees_text": trees_text,
            "release_text": release_text,
            "offset_text": offset_text,
            "offset": offset.get("method") == "l1",
            "blend_text": blend_text,
            "blend_weight": float(blend.get("weight") or 0.0),
            "shap_method": plots.shap_method(float(blend.get("weight") or 0.0)),
            "search": search_context,
            "params": [{"name": k, "value": v} for k, v in params.items()],
            "weighting": weighting,
            "calibration_method": method,
            "calibration_text": calibration_text,
            "cv_brier": [
                {"method": k, "brier": _fmt(v, 4), "chosen": k == method}
                for k, v in sorted(cv_brier.items(), key=lambda kv: (kv[1] is None, kv[1] or 0))
            ],
            "l1_c": l1.get("C", "–"),
            "l1_nonzero": l1.get("nonzero_coefficients", "–"),
            "l1_scaling": _l1_scaling_text(l1),
            "l1_grid": [
                {"C": k, "auroc": _fmt(v), "chosen": float(k) == float(l1.get("C", -1))}
                for k, v in (l1.get("tuning_auroc_by_C") or {}).items()
            ],
            "age_sex": {
                "age": _fmt(age_sex.get("coef_age_per_decade")),
                "female": _fmt(age_sex.get("coef_female")),
                "intercept": _fmt(age_sex.get("intercept")),
            }
            if age_sex
            else None,
        },
        "calibration_stats": _calibration_stats(m, labels),
        "calibration": _deciles(m),
        "smoothed": _smoothed(m),
        "thresholds": _thresholds(m),
        "budget_from_tuning": m.get("alert_budget_source") == schema.TUNING,
        "net_benefit": _net_benefit(m),
        "net_benefit_drawn": _net_benefit_drawn(m),
        "lead_time": lead,
        "subgroups": subgroup_rows,
        "subgroup_gaps": _subgroup_gaps(m),
        "subgroup_point": _subgroup_point(m),
        "characteristics": _characteristics(m),
        "learning_curve": _learning_curve(m),
        "metrics_withheld": bool(m["held_out"].get(PRIMARY, {}).get("withheld")),
        "top_features": [
            {
                "description": f.get("description", f.get("name", "")),
                "mean_abs_shap": _fmt(f.get("mean_abs_shap"), 4),
            }
            for f in m.get("top_features") or []
        ],
        "waterfall_rows": [f"held-out row {r}" for r in m.get("waterfall_rows") or []],
        "images": images,
        "figures": _figures(images, m),
        "validations": _validations(m, site, validations, " + ".join(network["sites"]) if network else None,
                                    recalibrated),
        "between_sites": _between_sites(held, site, validations) if network else None,
        "external_validations": len([v for v in external if v.get("design") != "network"]),
        "network_design": any(v.get("design") == "network" for v in external),
        "registered_models": len(registered),
        "skipped_designs": " and ".join(skipped),
        "promotion": _promotion(promotion, m["held_out"][PRIMARY] | {
            k: v for k, v in m.get("calibration_stats", {}).get(PRIMARY, {}).items() if k not in m["held_out"][PRIMARY]}),
        "drift": drift_section,
        "limitations": limitations,
        "intended_use": stated["intended_use"],
        "statements": stated["statements"],
        "suppressed": SUPPRESSED,
        "min_cell": privacy.MIN_CELL,
    }
