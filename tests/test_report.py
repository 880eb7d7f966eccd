"""The clinical report, rendered from a small real run.

One module-scoped run of the plain pipeline functions (pull one demo site, label
t2d_2y, featurize, train, evaluate) and contexts built the way ``flows.nightly.publish``
builds them; then checks on what the HTML shows, what it must never show, and how a
headless Chromium renders it.
"""

from __future__ import annotations

import base64
import html
import inspect
import json
import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from forewarn.records import privacy, schema

SECTIONS = (
    "summary",
    "data",
    "quality",
    "participants",
    "outcome",
    "predictors",
    "model",
    "performance",
    "calibration",
    "utility",
    "subgroups",
    "explanations",
    "validation",
    "limitations",
    "drift",
    "promotion",
    "tripod",
)
HEADINGS = (
    "1. Summary",
    "2. Data source and quality",
    "3. Participants and flow",
    "4. Outcome and prediction times",
    "5. Predictors and missing data",
    "6. Model and search",
    "7. Performance",
    "8. Calibration",
    "9. Clinical utility",
    "10. Subgroups",
    "11. Explanations",
    "12. Validation designs",
    "13. Limitations",
    "14. Data drift since the champion",
    "15. Promotion decision",
)
DECISION = (
    "forewarn-t2d_2y-academic v2 kept as challenger (champion stays v1): see the promotion section."
)
VALIDATION = {
    "design": "external",
    "train_site": "academic",
    "eval_site": "community",
    "run_id": "0123abcd",
    "auroc": 0.7123,
    "auroc_ci_low": 0.6351,
    "auroc_ci_high": 0.7891,
    "model_based_auroc": 0.6834,
    "auprc": 0.3012,
    "brier": 0.0812,
    "calibration_slope": 0.8123,
    "calibration_in_the_large": -0.2012,
    "recalibrated": {
        "auroc": 0.7123,
        "auprc": 0.3012,
        "brier": 0.0734,
        "calibration_slope": 0.9567,
        "calibration_in_the_large": 0.0123,
    },
    "note": "model shipped to the validating site; metrics on its held-out rows",
}
PROMOTION = {
    "decision": DECISION,
    "promoted": False,
    "champion_version": "1",
    "version": "2",
    "reasons": [
        "AUROC lower 95% bound 0.731 < champion v1 AUROC 0.794 - margin 0.02 = 0.774 on the same held-out rows",
        "calibration slope 1.203 is within [0.7, 1.4]",
    ],
}
CHROMIUM = Path("/usr/bin/chromium")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_network):
    from forewarn.evaluation.evaluate import EvaluationConfig, evaluate_and_explain
    from forewarn.features.featurize import FeatureConfig, featurize
    from forewarn.features.labels import label_dataset, load_task
    from forewarn.models.train import ModelConfig, train_models
    from forewarn.records.deid import DeidConfig, load_secret
    from forewarn.records.omop import pull_omop

    work = tmp_path_factory.mktemp("report-run")
    site = "academic"
    pull = pull_omop(
        demo_network[site],
        work / "pull",
        site=site,
        config=DeidConfig(load_secret(site, demo=True)),
    )
    spec = load_task("t2d_2y")
    labels = label_dataset(pull.events_dir, spec, work / "labels")
    table, splits, _ = labels.load()
    features = FeatureConfig()
    matrix = featurize(
        pull.events_dir, table, splits, work / "features", features, codes_path=pull.codes_path
    )
    trained = train_models(matrix, work / "models", ModelConfig(n_jobs=1))
    evaluation = evaluate_and_explain(
        matrix,
        trained,
        work / "evaluation",
        EvaluationConfig(bootstrap=20, shap_rows=200),
        site=site,
        outcomes_path=labels.outcomes_path,
        events_dir=pull.events_dir,
    )
    return {
        "work": work,
        "site": site,
        "pull": pull,
        "spec": spec,
        "labels": labels,
        "matrix": matrix,
        "trained": trained,
        "evaluation": evaluation,
        "features": features,
    }


def build_context(run, **overrides) -> dict:
    """report_context called as flows.nightly.publish calls it; ``overrides`` replace inputs."""
    from forewarn.evaluation.report import report_context

    _, _, attrition = run["labels"].load()
    inputs = {
        "site": run["site"],
        "task": run["spec"],
        "attrition": attrition,
        "pull_report": json.loads(run["pull"].report_path.read_text()) | {"demo": True},
        "features_shape": json.loads((run["matrix"].dir / "shape.json").read_text()),
        "feature_config": run["features"],
        "training": json.loads(run["trained"].summary_path.read_text()),
        "evaluation": run["evaluation"],
        "decision": DECISION,
        "code_version": "0.0+test",
        "data_digest": "0123456789abcdef",
        "quality": json.loads(run["pull"].quality_path.read_text()),
        "generated_at": "2026-01-01 00:00 UTC",
        "mlflow_run_id": "feedc0ffee",
    }
    return report_context(**(inputs | overrides))


def drift_record(run, policy=None) -> dict:
    """The drift check as the nightly flow runs it: the champion's profile of its train
    split, then this run's matrix (every split) compared with it."""
    import pandas as pd

    from forewarn.evaluation.drift import DriftPolicy, assess, reference_profile, vocabulary

    X, rows, columns = run["matrix"].load()
    importance = pd.read_parquet(run["evaluation"].explanations.importance_path)
    reference = reference_profile(X, rows, columns, importance, DriftPolicy())
    return assess(reference, X, rows, vocabulary(columns), policy or DriftPolicy())


@pytest.fixture(scope="module")
def drift(run):
    return drift_record(run)


@pytest.fixture(scope="module")
def full(run, drift):
    """The report with a further validation, a promotion decision and a drift check."""
    from forewarn.evaluation.report import render

    return render(build_context(run, validations=[VALIDATION], promotion=PROMOTION, drift=drift))


@pytest.fixture(scope="module")
def plain(run):
    """The report as an older flow renders it: no validations, no promotion."""
    from forewarn.evaluation.report import render

    return render(build_context(run))


class Page(HTMLParser):
    """Tags, ids, links, image sources and visible text of a page, with a tag-balance check."""

    VOID = {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.ids, self.hrefs, self.srcs, self.tags, self.stack, self.errors = [], [], [], [], [], []
        self.text_parts, self.cells = [], []
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()
        self.text = " ".join(" ".join(self.text_parts).split())

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if "src" in attrs:
            self.srcs.append(attrs["src"])
        if tag in ("td", "th"):
            self._cell = []
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append(" ".join("".join(self._cell).split()))
            self._cell = None
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
            return
        self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] in ("style", "title"):
            return
        self.text_parts.append(data)
        if self._cell is not None:
            self._cell.append(data)


# ------------------------------------------------------------------------------ tests


def test_report_context_takes_validations_and_promotion_as_optional_keywords():
    from forewarn.evaluation.report import report_context

    params = inspect.signature(report_context).parameters
    for name in ("validations", "promotion", "drift"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default is None


def test_every_section_is_there_and_linked_from_the_contents(full):
    page = Page(full)
    for section in SECTIONS:
        assert f'id="{section}"' in full
    assert len(page.ids) == len(set(page.ids)), "duplicate ids"
    internal = [h for h in page.hrefs if h.startswith("#")]
    assert {h[1:] for h in internal} >= set(SECTIONS) - {"quality"}
    assert not {h[1:] for h in internal} - set(page.ids), "a link to a missing anchor"
    for heading in HEADINGS:
        assert heading in page.text


def test_page_is_well_formed_self_contained_html5(full):
    assert (
        full.startswith("<!DOCTYPE html>")
        and '<html lang="en">' in full
        and '<meta charset="utf-8">' in full
    )
    page = Page(full)
    assert not page.errors and not page.stack, (page.errors, page.stack)
    assert {"script", "link", "iframe", "object"}.isdisjoint(page.tags)
    assert all(h.startswith("#") for h in page.hrefs), [
        h for h in page.hrefs if not h.startswith("#")
    ]
    assert all(s.startswith("data:image/png;base64,") for s in page.srcs)
    for external in ("http://", "https://", "@import", "url(", "@font-face"):
        assert external not in full


def test_primary_model_numbers_are_as_in_metrics(run, full):
    record = run["evaluation"].load_metrics()
    held = record["held_out"]["xgboost"]
    assert f"{held['auroc']:.3f} ({held['auroc_ci_low']:.3f}–{held['auroc_ci_high']:.3f})" in full
    assert f"{held['auprc']:.3f}" in full and f"{held['brier']:.4f}" in full
    assert (
        f"{held['calibration_slope']:.3f}" in full
        and f"{held['calibration_in_the_large']:.3f}" in full
    )
    # Every model's ECE is over the groups of the calibration curve published beside it.
    for model, curve in record["calibration"].items():
        weighted = sum(g["n"] * abs(g["observed"] - g["mean_predicted"]) for g in curve) / sum(g["n"] for g in curve)
        assert record["calibration_stats"][model]["ece"] == pytest.approx(weighted, rel=1e-12)
    assert held["ece"] == record["calibration_stats"]["xgboost"]["ece"] and f"{held['ece']:.4f}" in full
    # The integrated calibration index and its 90th percentile, in the calibration table's row.
    stats = record["calibration_stats"]["xgboost"]
    assert held["ici"] == stats["ici"] and 0 <= stats["e50"] <= stats["e90"]
    row = Page(_section(full, "calibration")).cells
    at = row.index(next(r for r in row if r.startswith("XGBoost")))  # the registered model, first
    assert row[at + 5:at + 8] == [f"{held['ece']:.4f}", f"{stats['ici']:.4f}", f"{stats['e90']:.4f}"]
    groups = len(record["calibration"]["xgboost"])  # the heading says when the tenths were merged
    assert (f", in {groups} groups</h3>" in full) is (groups < 10)
    training = json.loads(run["trained"].summary_path.read_text())
    assert f"{training['xgboost']['best_iteration'] + 1} trees" in full
    for method, brier in training["calibration"]["tuning_cv_brier"].items():
        assert method in full and f"{brier:.4f}" in full
    assert training["warnings"]  # this small run's events are few for the model's size
    for warning in training["warnings"]:  # verbatim, or with a count the report withholds replaced
        assert warning in html.unescape(full) or re.sub(r"^only \d+ ", "only a withheld number of ",
                                                         warning) in html.unescape(full), warning
    # The training events against the model's size: per feature the fitted model uses.
    size = training["sample_size"]
    text = html.unescape(full)
    assert (f"per feature the fitted model uses (a tree splits on it, or the L1-logistic it starts from or blends with "
            f"gives it a non-zero weight): {size['events_per_feature_used']:.2f} ({size['event_subjects']:,} subjects, "
            f"{size['features_used']:,} features used)") in text
    limitation = f"for the {size['features_used']:,} features the model uses"
    assert (limitation in text) is (size["events_per_feature_used"] < 10)


def test_every_figure_is_embedded_once_in_its_section(run, full):
    pngs = sorted((run["evaluation"].dir / "figures").glob("*.png"))
    assert len(pngs) == 11
    assert full.count("data:image/png;base64,") == len(pngs)
    for png in pngs:
        assert full.count(base64.b64encode(png.read_bytes()).decode()) == 1, png.name
    order = [
        full.index(f'id="{s}"')
        for s in (
            "performance",
            "calibration",
            "utility",
            "subgroups",
            "explanations",
            "validation",
        )
    ]

    def at(name: str) -> int:
        return full.index(
            base64.b64encode(
                (run["evaluation"].dir / "figures" / f"{name}.png").read_bytes()
            ).decode()
        )

    assert (
        order[0]
        < at("roc_pr")
        < order[1]
        < at("calibration")
        < order[2]
        < at("decision_curve")
        < order[3]
    )
    for name in ("shap_bar", "shap_beeswarm", "shap_dependence_1", "shap_waterfall_3"):
        assert order[4] < at(name) < order[5]


def test_waterfalls_are_labelled_by_held_out_row_number_only(run, full):
    from forewarn.evaluation.evaluate import held_out_frame
    from forewarn.models.train import PRIMARY, load_primary

    rows = run["evaluation"].load_metrics()["waterfall_rows"]
    assert len(rows) == 3
    for row in rows:
        assert f"held-out row {row}" in full
    # The numbers are positions among the held-out rows (the order of the held-out
    # predictions), and name the highest-risk rows explained.
    X, table, _ = run["matrix"].load()
    held = np.flatnonzero(table[schema.SPLIT].to_numpy() == schema.HELD_OUT)
    risk = load_primary(run["trained"]).probability(X[held])
    assert len(held_out_frame(run["trained"], PRIMARY)) == held.size > max(rows)
    assert list(risk[rows]) == sorted(risk[rows], reverse=True)
    if held.size <= 200:  # every held-out row explained: the three are the top three
        assert sorted(risk[rows]) == sorted(np.sort(risk)[-3:])


def test_threshold_lead_time_and_subgroup_tables(run, full):
    text = Page(full).text
    assert (
        "Operating points" in text
        and "alerts per 1,000" in text
        and "sensitivity" in text
        and "NPV" in text
    )
    record = run["evaluation"].load_metrics()
    for row in record["thresholds"]:
        point = (
            f"risk ≥ {row['threshold']:.2f}"
            if row["kind"] == "threshold"
            else f"the top {100 * row['alert_budget']:.0f}% of the tuning split"
        )
        assert point in text
    assert "small-cell suppression" in text.lower() and "median lead time" in text
    # a shown row's rates carry their patient-bootstrap intervals
    shown = [r for r in record["thresholds"] if r["tp"] is not None and r["sensitivity"] is not None]
    assert shown and all(r["sensitivity_ci_low"] <= r["sensitivity"] <= r["sensitivity_ci_high"] for r in shown)
    r = shown[0]
    assert f"{100 * r['ppv']:.1f}% ({100 * r['ppv_ci_low']:.1f}%–{100 * r['ppv_ci_high']:.1f}%)" in text
    assert "Lead time" in text and f"{record['lead_time']['subjects_with_outcome']}" in text
    # Subjects with the outcome are the held-out subjects with a positive row (not every
    # subject with an outcome some day); the operating point is the 5% alert budget's.
    from forewarn.evaluation.evaluate import held_out_frame
    from forewarn.models.train import PRIMARY

    held = held_out_frame(run["trained"], PRIMARY)
    positive = held.loc[held[schema.BOOLEAN_VALUE].astype(bool), schema.SUBJECT_ID].nunique()
    assert record["lead_time"]["subjects_with_outcome"] == (positive if positive >= 11 else None)
    # The 5% budget's row, or where its 2x2 table is withheld the nearest published budget's.
    rows = {r["alert_budget"]: r for r in record["thresholds"] if r.get("alert_budget") is not None}
    used = next((b for b in (0.05, 0.10, 0.01) if rows[b]["tp"] is not None), 0.05)
    budget = rows[used]
    assert record["subgroup_threshold"]["alert_budget"] == used
    assert record["lead_time"]["threshold"] == budget["threshold"] == record["subgroup_threshold"]["threshold"]
    # The budget's threshold was set on the tuning split's risks, before the held-out rows.
    from forewarn.evaluation.evaluate import split_frame

    tuning = split_frame(run["trained"], PRIMARY, schema.TUNING)[schema.PREDICTED_BOOLEAN_PROBABILITY]
    assert record["alert_budget_source"] == "tuning"
    assert budget["threshold"] == float(np.quantile(tuning.to_numpy(float), 1 - used, method="higher"))
    assert "each threshold set on the tuning split and applied here unchanged" in text
    # The decision curve runs at the configured threshold probabilities, from 0.1% up.
    from forewarn.evaluation.clinical import DEFAULT_NET_BENEFIT_THRESHOLDS
    from forewarn.evaluation.evaluate import EvaluationConfig

    assert [r["threshold"] for r in record["decision_curve"]] == list(DEFAULT_NET_BENEFIT_THRESHOLDS)
    assert EvaluationConfig().net_benefit_thresholds == list(DEFAULT_NET_BENEFIT_THRESHOLDS)
    with pytest.raises(ValueError, match=r"net_benefit_thresholds must lie in \(0, 1\) .*got \[0.0\]"):
        EvaluationConfig(net_benefit_thresholds=[0.0, 0.1])
    for group in ("Age band", "Sex", "Site", "Race", "Ethnicity"):
        assert group in text
    for level in {str(r["level"]) for r in record["subgroups"] if r["group"] == "age_band"}:
        assert level in text
    if any(r["suppressed"] for r in record["subgroups"]):
        assert "suppressed (fewer than 11 subjects" in text
    # Every shown subgroup's AUPRC comes with its patient-bootstrap interval.
    shown = [r for r in record["subgroups"] if not r["suppressed"] and r["auprc"] is not None]
    assert shown
    for r in shown:
        assert f"{r['auprc']:.3f} ({r['auprc_ci_low']:.3f}–{r['auprc_ci_high']:.3f})" in text
    assert "specificity, PPV, NPV and alerts per 1,000 are at one rule for all subgroups" in text
    # The "site" level is the whole held-out split: its net benefit is the held-out rows'
    # at the operating threshold, and its lead times are the lead-time table's.
    site = next(r for r in record["subgroups"] if r["group"] == "site")
    t = record["subgroup_threshold"]["threshold"]
    y = held[schema.BOOLEAN_VALUE].to_numpy(bool)
    flag = held[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float) >= t
    if site["net_benefit"] is not None:
        tp, fp = int((flag & y).sum()), int((flag & ~y).sum())
        assert site["net_benefit"] == pytest.approx((tp - fp * t / (1 - t)) / y.size)
        assert f"{site['net_benefit']:.3f}" in text
    assert site["net_benefit_all"] == pytest.approx(y.mean() - (1 - y.mean()) * t / (1 - t))
    lead = record["lead_time"]
    assert [site["lead_median_days"], site["lead_q25_days"], site["lead_q75_days"]] == [
        lead["median_days"], lead["q25_days"], lead["q75_days"]]
    assert "Net benefit is the decision curve's at the same threshold probability" in text


def test_race_and_ethnicity_are_audited_subgroups_not_predictors(run, full):
    """The demo records race and ethnicity (drawn apart from everything else): the
    subgroup table has a level per recorded category, plus "missing", each counted from
    the held-out rows and the pull's static codes; no feature is made of them; a level
    under 11 people is suppressed, and in the report a second with it."""
    from forewarn.evaluation.evaluate import audit_levels, split_frame
    from forewarn.evaluation.report import _subgroups
    from forewarn.models.train import PRIMARY

    record = run["evaluation"].load_metrics()
    held = split_frame(run["trained"], PRIMARY, schema.HELD_OUT)
    audit = audit_levels(run["pull"].events_dir, held[schema.SUBJECT_ID]).set_index("subject_id")
    for group in ("race", "ethnicity"):
        level = audit[group].reindex(held[schema.SUBJECT_ID]).to_numpy(object)
        rows = [r for r in record["subgroups"] if r["group"] == group]
        assert {r["level"] for r in rows} == {v for v in level}, group
        for r in rows:
            mine = np.array([v == r["level"] for v in level])
            subjects = int(held.loc[mine, schema.SUBJECT_ID].nunique())
            if subjects < 11:  # small, or else shown or hidden to protect a small one
                assert r["subjects"] is None and r["suppressed"], (group, r["level"])
            elif r["subjects"] is not None:
                assert r["subjects"] == subjects and r["rows"] == int(mine.sum()), (group, r["level"])
            if r["events"] is not None:
                assert r["events"] == int(held.loc[mine, schema.BOOLEAN_VALUE].sum())
        # in the report a small level's count cannot be had from the total less the others
        shown = [r for r in _subgroups(record, run["site"]) if r["group"] == group.capitalize()]
        assert len(shown) == len(rows) and sum(r["rows"] in ("<11", "withheld") for r in shown) != 1
    race = {r["level"]: r for r in record["subgroups"] if r["group"] == "race"}
    assert {"White", "Black or African American", None} <= set(race) and race["White"]["subjects"] >= 100
    _, _, columns = run["matrix"].load()
    assert not columns["code"].str.match(r"(?i)(race|ethnicity)//").any()
    text = Page(full).text
    assert "Codes of the Race or Ethnicity vocabularies are never features" in text
    assert "Race and ethnicity were not available" not in text and "Hispanic or Latino" in text
    # the fairness summary compares published levels only; its values are the table's
    from forewarn.evaluation.clinical import subgroup_gaps

    assert record["subgroup_gaps"] == subgroup_gaps(record["subgroups"]) and record["subgroup_gaps"]
    # the characteristics table has a row per level; its held-out cells are the subgroup
    # table's events and non-event rows, and its development cells the records' own counts
    rows = run["matrix"].load()[1]
    every = audit_levels(run["pull"].events_dir, rows[schema.SUBJECT_ID]).set_index("subject_id")
    development = np.isin(rows[schema.SPLIT].to_numpy(), (schema.TRAIN, schema.TUNING))
    outcome = rows[schema.BOOLEAN_VALUE].to_numpy(bool)
    for group in ("race", "ethnicity"):
        level = every[group].reindex(rows[schema.SUBJECT_ID]).to_numpy(object)
        published = {r["level"]: r for r in record["subgroups"] if r["group"] == group}
        table = [r for r in record["characteristics"]["rows"] if r.get("group") == group]
        assert [r["level"] for r in table if r["level"] is not None] == sorted(
            {v for v in level if v is not None}, key=lambda v: (v not in schema.AUDIT_LEVELS.values(), v))
        for r in table:
            mine = np.array([v == r["level"] for v in level])
            for k, with_outcome in ((0, True), (1, False)):
                if r["cells"][k]["status"] == "shown":
                    assert r["cells"][k]["n"] == int((mine & development & (outcome == with_outcome)).sum())
            sub = published.get(r["level"])
            if sub is not None and sub["events"] is not None:
                assert [c["n"] for c in r["cells"][2:]] == [sub["events"], sub["rows"] - sub["events"]]
            else:
                assert all(c["n"] in (None, 0) for c in r["cells"][2:])
            assert r["label"] in html.unescape(_section(full, "participants"))
        for k in range(4):  # no level comes back alone by subtraction from its group's rows
            assert sum(r["cells"][k]["status"] in ("suppressed", "withheld") for r in table) != 1, (group, k)
    white = next(r for r in record["characteristics"]["rows"] if r.get("level") == "White")
    assert all(c["status"] == "shown" for c in white["cells"][:2])  # 130 and 2,534 rows on this network
    assert any(c["status"] == "shown" and c["n"] for r in record["characteristics"]["rows"] if r.get("group")
               for c in r["cells"][2:])
    section = Page(_section(full, "subgroups")).text
    assert "Fairness summary: the largest difference between levels" in section
    for g in record["subgroup_gaps"]:
        for side in ("low", "high"):
            published = next(r for r in record["subgroups"] if r["group"] == g["group"] and r["level"] == g[f"{side}_level"])
            assert not published["suppressed"] and published[g["metric"]] == g[side]
        digits = 1 if g["metric"] == "alerts_per_1000" else 3
        assert f"{g['gap']:.{digits}f}" in section and f"{g['low']:.{digits}f} (" in section


def test_small_counts_show_as_less_than_11_with_a_complementary_cell_withheld(run):
    from forewarn.evaluation.report import render

    _, _, attrition = run["labels"].load()
    attrition = json.loads(json.dumps(attrition))
    attrition["in_gap"] = {"times": 7, "subjects": 3}
    page = Page(render(build_context(run, attrition=attrition)))
    cells = page.cells
    at = cells.index("outcome inside the lead-time gap")
    assert cells[at + 1] == "<11" and cells[at + 2] == "<11"
    assert (
        "withheld" in cells
    )  # the next smallest exclusion, so the <11 cannot come back by subtraction


def test_published_attrition_is_the_reports_flow_and_cannot_be_solved_by_subtraction():
    """The MLflow artifact ``data/attrition.json`` once suppressed each count alone: with
    the academic T2D demo's numbers, candidates less labelled less the shown exclusions
    gave the 4 outside the age range back. It now withholds what the report withholds
    (the 928 in the gap, the smallest other exclusion) and only the totals the report shows."""
    from forewarn.evaluation.report import published_attrition

    attrition = {
        "candidates": {"times": 169_751, "subjects": 20_000},
        "age": {"times": 4, "subjects": 2},
        "prior_observation": {"times": 22_312, "subjects": 3_000},
        "prevalent": {"times": 30_050, "subjects": 2_500},
        "in_gap": {"times": 928, "subjects": 700},
        "censored": {"times": 31_001, "subjects": 4_000},
        "sampled_out": {"times": 79_214, "subjects": 9_000},
        "labelled": {"times": 2_242, "subjects": 2_242},
        "positive": {"times": 738, "subjects": 738},
    }
    assert published_attrition(attrition) == {
        "candidates": {"times": 169_751, "subjects": 20_000},
        "labelled": {"times": 2_242, "subjects": 2_242},
        "age": {"times": None, "subjects": None},
        "prior_observation": {"times": 22_312, "subjects": 3_000},
        "prevalent": {"times": 30_050, "subjects": 2_500},
        "in_gap": {"times": None, "subjects": None},  # the smallest other step, withheld
        "censored": {"times": 31_001, "subjects": 4_000},
        "sampled_out": {"times": 79_214, "subjects": 9_000},
        "positive": {"times": 738},  # positive subjects are not in the report
    }


def test_protect_hides_a_second_count_when_one_could_be_recovered():
    from forewarn.evaluation.report import _protect

    assert _protect([500, 40, 200]) == ["500", "40", "200"]
    assert _protect([0, 5, 100, 30]) == ["0", "<11", "100", "withheld"]
    assert _protect([3, 4, 200, 300]) == ["<11", "<11", "withheld", "300"]  # 3 + 4 < 11
    assert _protect([None, None, 50]) == ["<11", "<11", "50"]
    assert _protect([5, 20, 15], spare=(2,)) == ["<11", "withheld", "15"]
    assert _protect([5, 0, 0]) == ["<11", "0", "0"]  # nothing left to hide


def test_a_suppressed_levels_hidden_counts_read_alike(full):
    # "<11" and "withheld" told apart on suppressed levels would give a small count back
    # from the totals (one part 1..10, the other 11+, their sum known): the note says why.
    assert "marks every hidden count alike, whether it is small or hidden so that a smaller level's cannot be " \
        "worked out from the totals" in Page(_section(full, "subgroups")).text


def test_subgroup_levels_protect_each_other():
    from forewarn.evaluation.report import _subgroups

    def level(name, n, events, suppressed=False):
        metrics = dict.fromkeys(
            ("auroc", "auprc", "brier", "calibration_in_the_large", "mean_predicted"), None
        )
        if not suppressed:
            metrics |= {
                "auroc": 0.8,
                "auprc": 0.4,
                "brier": 0.1,
                "calibration_in_the_large": 0.0,
                "mean_predicted": 0.2,
            }
        return {
            "group": "sex",
            "level": name,
            "subjects": n,
            "rows": n,
            "events": events,
            **metrics,
            "observed_rate": None if suppressed else events / n,
            "suppressed": suppressed,
        }

    rows = _subgroups(
        {"subgroups": [level("F", 120, 30), level("M", 100, 20), level(None, None, None, True)]}
    )
    female, male, missing = rows
    assert (female["subjects"], female["rows"], female["events"], female["observed"]) == (
        "120",
        "120",
        "30",
        "25.0%",
    )
    assert (missing["level"], missing["subjects"], missing["events"]) == ("missing", "<11", "<11")
    # Total minus the shown levels would give the missing level away: M is withheld too.
    assert (male["subjects"], male["rows"], male["events"], male["observed"]) == (
        "withheld",
    ) * 3 + ("–",)
    # ... and so is every metric that would give its count back (AUROC x events x non-events
    # is a multiple of 1/2; CITL holds the observed rate); the mean predicted risk stays.
    assert [male[k] for k in ("auroc", "auprc", "brier", "citl", "slope", "ece")] == ["–"] * 6
    assert male["predicted"] == "20.0%" and missing["suppressed"]
    assert female["auroc"] == "0.800" and female["citl"] == "0.000"
    # A level whose events metrics.json already withheld (None), not suppressed itself (so
    # 11+ events), was withheld to protect another level: "withheld", not "<11"; an older
    # record's metrics beside it are not shown.
    old = dict(level("80+", 63, 12), events=None, group="age_band")
    rows = _subgroups({"subgroups": [dict(level("70-79", 100, 20), group="age_band"), old,
                                     dict(level("18-39", 64, 4, True), group="age_band")]})
    assert [r["events"] for r in rows] == ["20", "withheld", "<11"]
    assert [r["auroc"] for r in rows] == ["0.800", "–", "–"]


def test_site_subgroup_adds_each_site_the_model_was_shipped_to():
    """The "Site" group: this run's held-out split, then each external validation's
    aggregate at this site's threshold; each level is its own site's whole held-out split,
    so a suppressed site does not withhold the others (no total to subtract from)."""
    from forewarn.evaluation.report import _subgroups

    def level(site, n, events, suppressed=False, **extra):
        shown = {} if suppressed else {"auroc": 0.81, "auprc": 0.42, "brier": 0.1, "calibration_in_the_large": 0.0,
                                       "mean_predicted": 0.2, "observed_rate": events / n}
        return {"group": "site", "level": site, "subjects": n, "rows": n, "events": None if suppressed else events,
                "suppressed": suppressed, **shown, **extra}

    home = level("academic", 500, 60)
    rows = _subgroups(
        {"subgroups": [home]},
        "academic",
        [
            {"design": "external", "eval_site": "community", "site_subgroup": level(
                "community", 400, 40, sensitivity=0.55, specificity=0.9, ppv=0.381, npv=0.95, alerts_per_1000=144.6)},
            {"design": "external", "eval_site": "rural", "site_subgroup": level("rural", 30, None, suppressed=True)},
            {"design": "temporal", "eval_site": "academic", "site_subgroup": level("academic", 100, 20)},
            {"design": "external", "eval_site": "old", "site_subgroup": None},  # a record from before site levels
        ],
    )
    assert [(r["level"], r["first"], r["span"], r["shipped"]) for r in rows] == [
        ("academic (this run's held-out split)", True, 3, False),
        ("community (model shipped there)", False, 3, True),
        ("rural (model shipped there)", False, 3, True),
    ]
    academic, community, rural = rows
    assert (academic["subjects"], academic["events"], academic["observed"]) == ("500", "60", "12.0%")
    assert (community["subjects"], community["events"], community["auroc"]) == ("400", "40", "0.810")
    assert (community["sensitivity"], community["ppv"], community["alerts"]) == ("55.0%", "38.1%", "145")
    assert rural["suppressed"] and rural["events"] == "<11"
    assert _subgroups({"subgroups": [home]}, "academic")[0]["span"] == 1


def test_network_report_site_subgroup_holds_the_network_model_at_each_other_site():
    """The network's own report: its "Site" group holds this site's held-out split, then
    the same network model at each other site (that site's level as its own network
    report shows it); external rows of a site's model do not belong there, and a site's
    own report does not take the network's rows as sites."""
    from forewarn.evaluation.report import _subgroups

    def level(site, n, events, **extra):
        return {"group": "site", "level": site, "subjects": n, "rows": n, "events": events, "suppressed": False,
                "auroc": 0.9, "auprc": 0.5, "mean_predicted": 0.1, "observed_rate": events / n, **extra}

    home = level("academic", 960, 109)
    validations = [
        {"design": "network", "eval_site": "community", "site_subgroup": level(
            "community", 1424, 95, sensitivity=0.4, specificity=0.97, ppv=0.5, npv=0.96, alerts_per_1000=50.2,
            threshold=0.2254, alert_budget=0.1)},
        {"design": "external", "eval_site": "rural", "site_subgroup": level("rural", 300, 30)},
    ]
    rows = _subgroups({"subgroups": [home]}, "academic", validations, network=True)
    assert [(r["level"], r["span"], r["shipped"], r["network_at"]) for r in rows] == [
        ("academic (this run's held-out split)", 2, False, False),
        ("community (the network's model there; alerts at risk ≥ 0.225, its 10% alert budget)", 2, False, True),
    ]
    community = rows[1]
    assert (community["subjects"], community["events"], community["observed"]) == ("1,424", "95", "6.7%")
    assert (community["sensitivity"], community["ppv"], community["alerts"]) == ("40.0%", "50.0%", "50")
    # A site's own report: the network row is a validation of another model, not a site level.
    assert [r["level"] for r in _subgroups({"subgroups": [home]}, "academic", validations)] == [
        "academic (this run's held-out split)", "rural (model shipped there)"]


def test_validations_table_when_given_internal_only_when_not(run, full, plain):
    text, bare = Page(full).text, Page(plain).text
    assert "external (model shipped to another site)" in text
    assert "0.712 (0.635–0.789)" in text and "slope 0.957" in text and "Brier 0.0734" in text
    assert "community" in text and "0123abcd" in text
    assert "Internal validation only" not in text
    assert "Internal validation only" in bare and "external (model shipped" not in bare
    assert "internal (held-out subjects, same site)" in bare
    # The model-based AUROC beside each AUROC: the external site's as given, this run's own from metrics.json.
    held = run["evaluation"].load_metrics()["held_out"]["xgboost"]
    cells = Page(_section(full, "validation")).cells
    assert cells[4:6] == ["AUROC (95% CI)", "model-based AUROC"]
    internal, external = cells.index("internal (held-out subjects, same site)"), cells.index(
        "external (model shipped to another site)")
    assert cells[internal + 5] == f"{held['model_based_auroc']:.3f}" and cells[external + 5] == "0.683"
    assert "Model-based AUROC: the AUROC the rows' case mix would give" in html.unescape(full)


def test_promotion_box(run, full, plain):
    from forewarn.evaluation.report import render

    text = Page(full).text
    assert (
        "Not promoted: kept as challenger (v2)" in text
        and "Current champion before this run: v1" in text
    )
    for reason in PROMOTION["reasons"]:
        assert reason in text
    assert 'class="box warn"' in full
    assert "bound 0.731 &lt; champion" in full  # text is escaped: "<" never opens a tag
    promoted = PROMOTION | {
        "promoted": True,
        "champion_version": None,
        "reasons": ["there is no champion yet"],
    }
    page = render(build_context(run, promotion=promoted))
    assert (
        "Promoted to champion" in Page(page).text
        and "none yet" in page
        and 'class="box ok"' in page
    )
    assert "No promotion rule was applied" in Page(plain).text and DECISION in Page(plain).text
    # The top of the page says which model serves when this one was refused.
    assert Page(_section(full, "summary")).text.startswith(
        'id="summary">1. Summary Not in service. This report describes v2, kept as challenger: champion v1 stays in service. '
        "Section 15 says why.")
    assert 'id="status"' not in page and 'id="status"' not in plain
    first = render(build_context(run, promotion=PROMOTION | {"champion_version": None}))
    assert "kept as challenger: there is no champion yet. Section 15 says why." in Page(first).text


def _section(page: str, name: str) -> str:
    start = page.index(f'id="{name}"')
    return page[start : page.index("<h2", start)]


def test_drift_section_shows_psi_prevalence_churn_and_the_action(drift, full, plain):
    section = _section(full, "drift")
    text = Page(section).text
    assert "14. Data drift since the champion" in text
    assert "No champion before this run" not in text
    # The largest PSI and the table's rows, in the champion's importance order.
    record = drift["compare"]
    assert record["max_psi"] is not None and f"<b>{record['max_psi']:.3f}</b>" in section
    cells = Page(section).cells
    assert len(record["features"]) == 20
    assert cells[:4] == ["rank", "feature (by mean |SHAP| of the champion)", "PSI", "shift"]
    for rank, f in enumerate(record["features"], start=1):
        row = cells[4 * rank : 4 * rank + 4]
        assert row[:3] == [str(rank), f["description"], f"{f['psi']:.3f}"]
        assert row[3] in ("stable", "moderate") and (row[3] == "moderate") == (f["psi"] > 0.1)
    assert "AGE/years" not in section  # readable descriptions, not column names
    # Prevalence then and now, vocabulary churn (the same vocabulary: nothing lost).
    prev = record["prevalence"]
    assert f"{100 * prev['reference']:.2f}%" in text and f"{100 * prev['new']:.2f}%" in text
    assert f"{100 * prev['relative_change']:+.1f}%" in text
    assert "champion's codes missing from the new data 0.0%" in text
    assert "Jaccard overlap 1.000" in text
    # Train split only against every split: the same subjects' population, no drift.
    assert not drift["decision"]["drifted"] and drift["decision"]["action"] == "retrain"
    assert "No drift beyond the policy: action “retrain”" in text
    for reason in drift["decision"]["reasons"]:
        assert reason in html.unescape(section)
    assert "Data drift since the champion" in Page(plain).text
    assert "No champion before this run: nothing to compare." in Page(_section(plain, "drift")).text


def test_drift_section_flags_drift_and_names_the_features(run):
    from forewarn.evaluation.drift import DriftPolicy, assess
    from forewarn.evaluation.report import render

    # A threshold no feature stays under: every profiled feature with PSI > 0 drifts.
    record = drift_record(run, DriftPolicy(psi_threshold=1e-9, on_drift="alert"))
    drifted = [f for f in record["compare"]["features"] if f["psi"] > 1e-9]
    assert drifted and record["decision"]["action"] == "alert"
    page = render(build_context(run, drift=record))
    section = _section(page, "drift")
    text = Page(section).text
    assert 'class="box warn"' in section and "Drift beyond the policy: action “alert”" in text
    assert "never promote it automatically" in text
    top = max(drifted, key=lambda f: f["psi"])
    assert f"feature {top['name']} ({top['description']}) drifted: PSI {top['psi']:.3f}" in text
    assert Page(section).cells.count("drifted") == len(drifted)
    assert "drifted from the data the champion was trained on (section 14" in Page(page).text
    # No champion: the decision still shows, with its one reason.
    none = render(build_context(run, drift=assess(None, None, None, [], DriftPolicy())))
    bare = Page(_section(none, "drift")).text
    assert "No champion before this run: nothing to compare." in bare and "Action: retrain." in bare
    assert "no champion" in bare
    # A champion without a drift profile: the flow's own decision and reason.
    old = {
        "compare": None,
        "decision": {
            "action": "retrain",
            "drifted": False,
            "reasons": ["champion v3 has no drift profile (trained before drift checks)"],
        },
    }
    bare = Page(_section(render(build_context(run, drift=old)), "drift")).text
    assert "Nothing to compare with the champion." in bare and "No champion before this run" not in bare
    assert "champion v3 has no drift profile" in bare and "Train a challenger" in bare


def test_drift_section_shows_a_withheld_psi_as_withheld(run):
    import pandas as pd

    from forewarn.evaluation.drift import DriftPolicy, assess, reference_profile, vocabulary
    from forewarn.evaluation.report import render

    # 300 new rows: some features have a bin of 1 to 10 of them (PSI withheld), some not.
    X, rows, columns = run["matrix"].load()
    importance = pd.read_parquet(run["evaluation"].explanations.importance_path)
    reference = reference_profile(X, rows, columns, importance, DriftPolicy())
    record = assess(reference, X[:300], rows[:300], vocabulary(columns), DriftPolicy())
    features = record["compare"]["features"]
    withheld = [f for f in features if f["psi_withheld"]]
    assert withheld and all(f["psi"] is None for f in withheld) and len(withheld) < len(features)
    section = _section(render(build_context(run, drift=record)), "drift")
    cells, text = Page(section).cells, Page(section).text
    for rank, f in enumerate(features, start=1):
        row = cells[4 * rank : 4 * rank + 4]
        if f["psi_withheld"]:
            assert row[2:] == ["withheld", "drifted" if f["drifted"] else "not drifted"]
        else:
            assert row[2] == f"{f['psi']:.3f}"
    n = len(withheld)
    assert f"PSI withheld for {n} feature{'s' if n > 1 else ''}: a bin of today's data holds fewer than 11 rows" in text
    shown = record["compare"]["max_psi"]
    assert f"Largest published PSI over the champion's most important features: {'withheld' if shown is None else f'{shown:.3f}'}" in text


def test_tasks_with_measurement_criteria_and_other_prediction_times_render(run):
    from forewarn.evaluation.report import render
    from forewarn.features.labels import parse_task

    data = run["spec"].model_dump(mode="json")
    data["prediction_times"] = {"every_days": 180, "max_per_subject": 2, "sample_from": "population"}
    data["outcome"]["values"] = [
        {"code": "LOINC//1558-6", "above": 126, "times": 2, "min_days_apart": 90}
    ]
    text = Page(render(build_context(run, task=parse_task(data)))).text
    assert ("every 180 days from the first eligible day; at most 2 per subject, chosen by a seeded hash among the "
            "times the age and prior-observation criteria keep, the other exclusions applied to the drawn times "
            "(people count in proportion to their times at risk)") in text
    assert "LOINC//1558-6 above 126, 2 times, at least 90 days apart" in text


def test_no_subject_id_or_prediction_time_reaches_the_report(run, full, plain):
    labels = pq.read_table(run["labels"].labels_path).to_pandas()
    ids = {str(int(s)) for s in labels[schema.SUBJECT_ID]}
    assert len(ids) > 100
    for page in (full, plain):
        for subject in ids:
            assert subject not in page
        for t in labels[schema.PREDICTION_TIME].head(200):
            assert t.strftime("%Y-%m-%d %H:%M") not in page and t.isoformat() not in page


# ---------------------------------------------------------------------- headless browser


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _console_problems(stderr: str) -> list[str]:
    """Console output and uncaught errors; Chromium logs every console message as
    ``INFO:CONSOLE...`` whatever its level, and the report has no scripts, so any is a failure."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_report_renders_in_headless_chromium_without_console_errors(run, tmp_path):
    if not CHROMIUM.is_file():
        message = f"no Chromium at {CHROMIUM} (CI installs it); set FOREWARN_REQUIRE_CHROMIUM=1 to fail instead"
        if os.environ.get("FOREWARN_REQUIRE_CHROMIUM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from PIL import Image

    from forewarn.evaluation.report import write_report

    path = write_report(
        build_context(run, validations=[VALIDATION], promotion=PROMOTION, drift=drift_record(run)),
        tmp_path / "report.html",
    )
    url = path.resolve().as_uri()

    dump = _chromium(["--dump-dom", url], tmp_path / "profile-dom")
    assert dump.returncode == 0, dump.stderr[-2000:]
    assert not _console_problems(dump.stderr)
    dom = Page(dump.stdout)
    for heading in HEADINGS:
        assert heading in dom.text
    assert dom.tags.count("img") == 11

    shot = tmp_path / "report.png"
    screen = _chromium(
        [f"--screenshot={shot}", "--window-size=1200,3000", url], tmp_path / "profile-shot"
    )
    assert screen.returncode == 0, screen.stderr[-2000:]
    assert not _console_problems(screen.stderr)
    assert shot.is_file() and shot.stat().st_size > 50_000
    with Image.open(shot) as image:
        assert image.size == (1200, 3000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50  # text, tables and boxes, not a blank page


def test_model_section_shows_the_search_and_how_the_tree_count_was_chosen(run, plain):
    from forewarn.evaluation.report import render

    section = html.unescape(plain.split('id="model"')[1].split("<h2")[0])
    training = json.loads(run["trained"].summary_path.read_text())
    assert training["xgboost"]["tree_count"] == {"method": "tuning"}  # the default
    assert "trees, after early stopping on the tuning split's log-loss" in section
    assert "No hyperparameter search ran" in section and "Search trials" not in section
    training["search"] = {"objective": "auprc", "best_params": {"max_depth": 3}, "trials": [
        {"trial": 0, "params": {"max_depth": 3, "learning_rate": 0.05}, "objective": "auprc", "value": 0.4123, "state": "complete"},
        {"trial": 1, "params": {"max_depth": 6, "learning_rate": 0.2}, "objective": "auprc", "value": 0.2011, "state": "pruned"},
        {"trial": 2, "params": {"max_depth": 2, "learning_rate": 0.01}, "objective": "auprc", "value": 0.3876, "state": "complete"},
    ]}
    training["xgboost"]["tree_count"] = {"method": "cv", "folds": 5}
    section = html.unescape(render(build_context(run, training=training)).split('id="model"')[1].split("<h2")[0])
    assert "mean log-loss of 5 subject-grouped folds of the train split" in section
    assert "ran 3 trials (1 pruned), each fitted on the train split and scored by tuning AUPRC; trial 0 scored best (0.412)" in section
    assert "No hyperparameter search ran" not in section
    assert "complete (chosen)</td><td>0.412</td><td class=\"l\">max_depth 3, learning_rate 0.050" in section
    assert "pruned</td><td>0.201</td>" in section


def test_model_section_says_when_the_trees_boost_from_the_l1_offset(run, plain):
    from forewarn.evaluation.report import render

    assert "boost from an offset" not in plain  # T2D is not rare: no offset
    training = json.loads(run["trained"].summary_path.read_text())
    training["xgboost"]["offset"] = {"method": "l1", "model": "l1_logistic", "C": 0.03, "folds": 5}
    section = html.unescape(render(build_context(run, training=training)).split('id="model"')[1].split("<h2")[0])
    assert ("The trees boost from an offset: every row starts at the L1-logistic's log-odds (the baseline below, C = 0.03; "
            "for the train rows out-of-fold, from 5 subject-grouped folds") in section
    page = html.unescape(render(build_context(run, training=training)))
    assert "(log-odds scale): each feature's TreeSHAP value plus its part of the L1-logistic offset" in page
    assert "its part of the L1-logistic offset" not in html.unescape(plain)


def test_model_section_says_how_the_trees_blend_with_the_l1(run, plain):
    from forewarn.evaluation.report import render

    def pages(blend):
        training = json.loads(run["trained"].summary_path.read_text())
        training["xgboost"]["blend"] = blend
        page = html.unescape(render(build_context(run, training=training)))
        return page.split('id="model"')[1].split("<h2")[0], page.split('id="explanations"')[1].split("<h2")[0]

    tuned = {"method": "tuned", "weight": 0.3, "objective": "auroc", "score_by_weight": {}, "scored_on": "tuning"}
    model, explanations = pages(tuned)
    assert ("its log-odds are 0.7 x the trees' plus 0.3 x the L1-logistic's (weight 0.3 on the L1, chosen by the "
            "AUROC on the tuning split from 0, 0.1, ..., 1)") in model
    assert "scores as the L1-logistic alone" not in model
    assert "blended with the L1-logistic's exact linear SHAP values at weight 0.3 (section 6)" in explanations
    assert explanations.startswith('>11. Explanations (TreeSHAP and linear SHAP)</h2>')
    model, explanations = pages(tuned | {"weight": 1.0, "objective": "auprc"})
    assert "chosen by the AUPRC on the tuning split" in model
    assert "With weight 1 the model scores as the L1-logistic alone: on the tuning split the trees did not" in model
    # No trees left to explain: the section says whose values they are.
    assert explanations.startswith('>11. Explanations (linear SHAP of the L1-logistic)</h2>')
    assert "the model is the L1-logistic alone, so these are its exact linear SHAP values" in explanations
    assert "uncalibrated XGBoost" not in explanations
    model, explanations = pages(tuned | {"weight": 0.0, "objective": "auprc"})
    assert "Blending with the L1-logistic did not improve the AUPRC on the tuning split: the trees score alone." in model
    assert "linear SHAP values at weight" not in explanations
    assert explanations.startswith('>11. Explanations (TreeSHAP)</h2>')
    crossfit = tuned | {"method": "crossfit", "weight": 0.2, "folds": 5, "rows": 12345, "events": 234}
    model, _ = pages(crossfit)
    assert ("(weight 0.2 on the L1, chosen by the AUROC on the tuning rows and the train rows' out-of-fold log-odds "
            "(5 subject folds; 12,345 rows) from 0, 0.1, ..., 1)") in model
    guard = {"metric": "auroc", "l1": 0.9404, "excluded": ["0.0", "0.1"], "by_weight": {}}
    model, _ = pages(crossfit | {"objective": "auprc", "guard": guard})
    assert ("(5 subject folds; 12,345 rows) from 0, 0.1, ..., 1, among the weights whose AUROC there is at "
            "least the L1-logistic's alone (0.940); that ruled out 0.0, 0.1)") in model
    model, _ = pages(crossfit | {"guard": guard | {"metric": "auprc", "excluded": []}})
    assert "among the weights whose AUPRC there is at least the L1-logistic's alone (0.940))" in model
    rule = {"name": "one_se", "best": 0.2, "tolerance": {}, "within": ["0.2", "0.3", "0.4"]}
    model, _ = pages(crossfit | {"weight": 0.4, "guard": guard, "objective": "auprc", "rule": rule})
    assert ("least the L1-logistic's alone (0.940); that ruled out 0.0, 0.1; the best there was 0.2, and the model "
            "takes 0.4, the largest weight whose AUPRC lies within one standard error (patient bootstrap) of the "
            "best's: the nearest the L1-logistic that the rows cannot tell from the best)") in model
    model, _ = pages(crossfit | {"rule": rule | {"within": ["0.2"]}})
    assert "1; no larger weight's AUROC lies within one standard error of the best's)" in model
    model, _ = pages(crossfit | {"weight": 1.0, "rule": rule | {"within": ["0.2", "1.0"]}})
    assert ("With weight 1 the model scores as the L1-logistic alone: on the tuning rows and the train rows' out-of-fold "
            "log-odds (5 subject folds; 12,345 rows) the trees' gain over its ranking lies within one "
            "standard error, so the trees are kept but carry no weight.") in model
    model, _ = pages(crossfit | {"weight": 0.0})
    assert "did not improve the AUROC on the tuning rows and the train rows' out-of-fold log-odds" in model
    model, _ = pages(crossfit | {"weight": 0.0, "rule": {"name": "constant_l1", "best": 0.0}})
    assert ("The L1-logistic kept no column at its C and scores every row alike, so it was not blended in: the trees "
            "score alone.") in model and "did not improve" not in model
    model, _ = pages({"method": "fixed", "weight": 0.5, "objective": None, "score_by_weight": {}})
    assert "(weight 0.5 on the L1, as the study sets it)" in model
    model, _ = pages({"method": "none", "weight": 0.0, "objective": None, "score_by_weight": {}})
    assert "blend" not in model.lower()


def test_model_section_says_what_the_rule_of_11_did_to_the_trees(run, plain):
    from forewarn.evaluation.report import render

    release = json.loads(run["trained"].summary_path.read_text())["xgboost"]["release"]
    assert release["min_cell"] == 11 and release["leaves_after"] <= release["leaves_before"]
    assert "Before it left the site the trees were made to obey the rule of 11" in html.unescape(plain)

    def model_section(release):
        training = json.loads(run["trained"].summary_path.read_text())
        training["xgboost"]["release"] = release
        return html.unescape(render(build_context(run, training=training)).split('id="model"')[1].split("<h2")[0])

    mended = {"trees": 120, "leaves_before": 1500, "leaves_after": 1200, "trees_changed": 100, "splits_moved": 250,
              "min_cell": 11}
    predict = json.loads(run["trained"].summary_path.read_text())["xgboost"]["best_iteration"] + 1  # the fixture's model
    assert predict < 120
    assert ("Before it left the site the trees were made to obey the rule of 11 (every leaf holds no train subject with "
            "the outcome or at least 11, and likewise without it, so that no leaf value gives a small count away): 100 "
            f"of the 120 trees in the file ({predict} predict; the other {120 - predict} are early stopping's patience, "
            "kept unused) were "
            "mended: 250 splits moved to another of XGBoost's histogram cuts on the same feature, "
            "widening a small group rather than merging it away, and the other breaches merged into their parent's "
            "leaf, so 1,200 of the 1,500 leaves remain; every leaf value was then recomputed on all train rows by "
            "XGBoost's Newton step.") in model_section(mended)
    assert ": every leaf XGBoost grew already did; every leaf value" in model_section(mended | {"trees_changed": 0})
    # no patience trees: plain
    assert f"100 of the {predict} trees were mended" in model_section(mended | {"trees": predict})
    assert "threshold" not in model_section(mended)  # a training record from before session 18
    assert ("Newton step. No split's threshold shows a value: each has at least 11 train subjects with a value below it "
            "and as many at or above it, or parts present values from missing ones (7 thresholds were replaced so, every "
            "train row keeping its leaf).") in model_section(mended | {"thresholds_replaced": 7})
    none_replaced = model_section(mended | {"thresholds_replaced": 0})
    assert "or parts present values from missing ones." in none_replaced and "were replaced" not in none_replaced
    assert "rule of 11" not in model_section(None)


def test_per_table_counts_withheld_when_a_quarantine_is_small(run):
    from forewarn.evaluation.report import render

    report = json.loads(run["pull"].report_path.read_text()) | {"demo": True}
    name = next(iter(report["tables"]))
    table = report["tables"][name]
    for quarantined, withheld in ((5, True), (20, False)):
        changed = json.loads(json.dumps(report))
        changed["tables"][name] |= {"read": table["kept"] + quarantined, "quarantined": quarantined,
                                    "reasons": {"birth year missing": quarantined}}
        changed["quarantined"] = sum(t["quarantined"] for t in changed["tables"].values())
        page = Page(render(build_context(run, pull_report=changed)))
        at = page.cells.index(name)
        row = page.cells[at + 1:at + 4]
        if withheld:  # 5 would come back as read - kept, or from the totals: nothing per table
            assert row == ["withheld"] * 3 and "Per-table counts are withheld" in page.text
            assert "birth year missing" in page.cells and "5" not in row
        else:
            assert row == [f"{table['kept'] + 20:,}", f"{table['kept']:,}", "20"]
            assert "Per-table counts are withheld" not in page.text


def test_network_rows_trained_and_not(run):
    """The network design's row: its model's numbers when trained; when not, dashes and why."""
    from forewarn.evaluation.report import render

    trained = VALIDATION | {"design": "network", "train_site": "academic + community", "eval_site": "academic",
                            "auroc": 0.8456, "auroc_ci_low": 0.8012, "auroc_ci_high": 0.8899, "recalibrated": None,
                            "note": "one model trained across 2 sites without moving rows"}
    text = Page(render(build_context(run, validations=[trained, VALIDATION]))).text
    assert "network (one model trained across the sites without moving rows)" in text
    assert "academic + community" in text and "0.846 (0.801–0.890)" in text
    assert "Internal validation and 1 further validation of this site's model, and the network's model" in text
    skipped = {"design": "network", "train_site": "academic + community", "eval_site": "academic", "recalibrated": None,
               "note": "not trained: no site of ['academic', 'community'] has 11 tuning events"}
    context = build_context(run, validations=[skipped])
    text = Page(render(context)).text
    assert "not trained: no site of ['academic', 'community'] has 11 tuning events" in text
    assert "Internal validation and 0 further validations of this site's model, and the network's model" in text
    row = context["validations"][1]
    assert [row[k] for k in ("auroc", "auprc", "brier", "slope", "citl", "recalibrated")] == ["–"] * 6


def test_participants_characteristics_table_shows_the_records_numbers(run, full):
    """Section 3's characteristics table (TRIPOD+AI 20a) renders metrics.json's record:
    the groups' counts, age and sex, and the top predictors by the model's SHAP."""
    record = run["evaluation"].load_metrics()["characteristics"]
    importance = [f["name"] for f in run["evaluation"].load_metrics()["top_features"]]
    section = html.unescape(_section(full, "participants"))
    assert "Characteristics of the participants" in section
    development = record["groups"][0]
    assert development["split"] == "development" and development["outcome"] is True
    assert f"<td>{development['rows']:,}</td>" in section
    age = record["rows"][0]
    assert age["label"].startswith("Age at the prediction time") and age["cells"][0]["status"] == "shown"
    assert f"{age['cells'][0]['mean']:.1f} ({age['cells'][0]['sd']:.1f})" in section
    assert f"<td>{age['smd']:.2f}</td>" in section
    chosen = [r["feature"] for r in record["rows"] if r["kind"] == "recorded" and r["feature"] not in (FEMALE_COLUMN, None)]
    assert record["top"] == 10 and chosen == [n for n in importance if n not in (AGE_COLUMN, FEMALE_COLUMN)][:10]
    for row in record["rows"]:
        assert row["label"] in section
        for cell in row["cells"]:
            if cell["status"] == "shown" and row["kind"] == "recorded" and cell["n"] is not None:
                assert f"{cell['n']:,} ({100 * cell['pct']:.1f}%)" in section
    assert '<a href="#characteristics">3</a>' in full


AGE_COLUMN, FEMALE_COLUMN = "AGE/years/at_prediction/t", "Gender//F/static/present/static"


def test_a_held_out_split_with_few_events_withholds_discrimination_and_the_roc_figure(run, tmp_path):
    """With 5 held-out events the AUROC (with the split's size) would give the 5 back:
    metrics.json, the figures and the report carry no discrimination number."""
    import shutil

    import pandas as pd

    from forewarn.evaluation.evaluate import EvaluationConfig, evaluate_and_explain
    from forewarn.evaluation.report import WITHHELD_METRICS, render
    from forewarn.models.train import TrainedModels

    trained = TrainedModels(Path(shutil.copytree(run["trained"].dir, tmp_path / "models")))
    for path in (trained.dir / "predictions").glob("*.parquet"):
        pred = pd.read_parquet(path)
        held = (pred["split"] == "held_out").to_numpy()
        positive = pred["boolean_value"].to_numpy(bool)
        keep = np.flatnonzero(held & positive)[:5]  # the first 5 held-out events stay events
        drop = held & positive
        drop[keep] = False
        pred.loc[drop, "boolean_value"] = False
        pred.to_parquet(path)
    evaluation = evaluate_and_explain(run["matrix"], trained, tmp_path / "evaluation",
                                      EvaluationConfig(bootstrap=20, shap_rows=200), site=run["site"])
    record = evaluation.load_metrics()["held_out"]
    for model, rec in record.items():
        assert rec["withheld"] is True, model
        assert all(rec[k] is None for k in ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "brier")), model
        assert rec["events"] is None
    assert not (evaluation.dir / "figures" / "roc_pr.png").exists()
    # 5 events: every threshold's 2x2 table has a cell of 1..10, so no net benefit and no figure
    assert all(r["net_benefit_model"] is None for r in evaluation.load_metrics()["decision_curve"])
    assert not (evaluation.dir / "figures" / "decision_curve.png").exists()
    assert not (evaluation.dir / "figures" / "calibration.png").exists()  # every curve in it is withheld
    page = render(build_context(run, evaluation=evaluation))
    assert "Discrimination withheld." in page
    assert "No calibration figure: the held-out split has fewer than 11 events or non-events" in html.unescape(page)
    summary = html.unescape(_section(page, "summary"))
    assert f"AUROC <b>{WITHHELD_METRICS}</b>" in summary
    assert "ROC and precision-recall curves" not in page


def test_model_section_says_how_the_l1_scaled_its_features(run, plain):
    """The L1's scales (each one person's largest value) stay at the site and columns
    that fewer than 11 train subjects hold are left out (``models.train.l1_columns``); the
    report says so."""
    from forewarn.evaluation.report import render

    training = json.loads(run["trained"].summary_path.read_text())
    l1 = training["l1_logistic"]
    assert l1["min_cell"] == 11 and isinstance(l1["columns_left_out"], int)
    assert ("L1-regularised logistic regression on max-abs-scaled features (scaler fitted on train; the scales, each one "
            "person's largest value, stay at the site: the model carries each feature's weight") in html.unescape(plain)

    def model_section(record):
        training["l1_logistic"] = record
        return html.unescape(render(build_context(run, training=training)).split('id="model"')[1].split("<h2")[0])

    assert ("carries each feature's weight; 7 features that fewer than 11 train subjects hold a value of were left out); "
            "C = 0.3") in model_section(l1 | {"columns_left_out": 7, "C": 0.3})
    assert "were left out" not in model_section(l1 | {"columns_left_out": 0})
    before = {k: v for k, v in l1.items() if k not in ("min_cell", "columns_left_out")}
    assert "L1-regularised logistic regression on max-abs-scaled features (scaler fitted on train); C =" in model_section(before)


def test_per_row_shap_figures_draw_no_value_fewer_than_11_rows_reach(run, tmp_path, monkeypatch):
    """The beeswarm and dependence plots get bottom- and top-coded values
    (``evaluate.top_coded``): in every drawn column at least 11 rows sit at its smallest
    drawn value and 11 at its largest, so no one person's extreme value is drawn."""
    from forewarn.evaluation import plots
    from forewarn.evaluation.evaluate import EvaluationConfig, evaluate_and_explain

    drawn = []
    for name in ("shap_beeswarm", "shap_dependence"):
        original = getattr(plots, name)

        def capture(values, data, *args, _original=original, **kwargs):
            drawn.append(np.array(data))
            return _original(values, data, *args, **kwargs)

        monkeypatch.setattr(plots, name, capture)
    evaluate_and_explain(run["matrix"], run["trained"], tmp_path / "evaluation",
                         EvaluationConfig(bootstrap=20, shap_rows=200), site=run["site"])
    assert len(drawn) >= 2
    continuous = 0
    for data in drawn:
        for column in data.T:
            values = column[~np.isnan(column)]
            if values.size:
                assert (values <= values.min()).sum() >= 11 and (values >= values.max()).sum() >= 11
                continuous += np.unique(values).size > 2
    assert continuous  # values other than a flag's were drawn, and coded


def test_withheld_deciles_and_operating_points_say_withheld_not_under_11():
    """A decile withheld whole in metrics.json may hold 96 rows, and a threshold row's four
    cells go as a block: "<11" would be false for them, "withheld" is what they are."""
    from forewarn.evaluation.report import _deciles, _thresholds

    m = {"calibration": {"xgboost": [
        {"bin": 1, "n": 96, "events": 20, "mean_predicted": 0.1, "observed": 0.2},
        {"bin": 2, "n": None, "events": None, "mean_predicted": None, "observed": None},
        {"bin": 3, "n": None, "events": None, "mean_predicted": None, "observed": None},
    ]}, "thresholds": [
        {"kind": "threshold", "threshold": 0.5, "alerts_per_1000": None, "tp": None, "fp": None, "fn": None, "tn": None},
        {"kind": "threshold", "threshold": 0.2, "alerts_per_1000": 120.4, "sensitivity": 0.5, "specificity": 0.9,
         "ppv": 0.3, "npv": 0.95, "tp": 20, "fp": 40, "fn": 20, "tn": 420},
    ]}
    assert [(d["n"], d["events"], d["observed"]) for d in _deciles(m)] == [
        ("96", "20", "0.200"), ("withheld", "withheld", "–"), ("withheld", "withheld", "–")]
    withheld, shown = _thresholds(m)
    assert [withheld[k] for k in ("tp", "fp", "fn", "tn", "sensitivity", "alerts_per_1000")] == ["withheld"] * 4 + ["–", "–"]
    assert [shown[k] for k in ("tp", "fn", "sensitivity", "alerts_per_1000")] == ["20", "20", "50.0%", "120"]


def test_limitations_name_complete_case_labels_and_the_date_shift_on_a_temporal_cutoff(run):
    _, _, attrition = run["labels"].load()
    censored = attrition | {"censored": {"times": 40, "subjects": 12}}
    temporal = [{"design": "temporal", "train_site": run["site"], "eval_site": run["site"], "auroc": 0.8}]
    context = build_context(run, attrition=censored, validations=temporal)
    text = " ".join(context["limitations"])
    assert "complete-case labelling, as PatientLevelPrediction's requireTimeAtRisk" in text
    assert "(up to ±365 days)" in text and "so is the temporal validation's cutoff" in text
    plain = " ".join(build_context(run, attrition=attrition | {"censored": {"times": 0, "subjects": 0}})["limitations"])
    assert "complete-case" not in plain and "temporal validation's cutoff" not in plain
    assert "(up to ±365 days), so calendar effects (season, coding changes) are blurred." in plain
    assert "Between nights: this site publishes a night only when 0 or 11 or more people changed" in plain


def test_performance_note_says_the_registered_model_is_a_blend(run):
    from forewarn.evaluation.report import render

    training = json.loads(run["trained"].summary_path.read_text())
    training["xgboost"]["blend"] = {"method": "crossfit", "weight": 0.4, "objective": "auroc", "score_by_weight": {}}
    page = html.unescape(render(build_context(run, training=training)))
    performance = page.split('id="performance"')[1].split("<h2")[0]
    calibrated = training["calibration"]["method"] != "none"
    name = "XGBoost + L1 blend (calibrated)" if calibrated else "XGBoost + L1 blend (no calibrator)"
    then = "then calibrated (section 6)" if calibrated else "with no calibrator (none beat its raw risks"
    assert f"{name} is the registered model: its trees' log-odds blended with the L1-logistic's at weight 0.4, {then}" in (
        performance)
    training["calibration"] = dict(training["calibration"], method="none")
    page = html.unescape(render(build_context(run, training=training)))
    assert ("XGBoost + L1 blend (no calibrator) is the registered model: its trees' log-odds blended with the "
            "L1-logistic's at weight 0.4, with no calibrator (none beat its raw risks on the tuning split; section 6)") in page
    training["xgboost"]["blend"] = {"method": "none", "weight": 0.0, "objective": None, "score_by_weight": {}}
    assert "blended" not in html.unescape(render(build_context(run, training=training))).split('id="performance"')[1].split("<h2")[0]


def test_network_report_validation_table_sizes_recalibration_and_between_sites(run):
    """The network model's own report: each row shows its held-out rows, events and event
    rate; this site's row its numbers after recalibration here too, with a caveat where
    that made the Brier score worse; below the table, the model's AUROC between the sites
    (metrics.between_sites on the rows shown)."""
    from forewarn.evaluation import metrics
    from forewarn.evaluation.report import render

    training = json.loads(run["trained"].summary_path.read_text())
    training["federated"] = {"sites": ["academic", "community"], "visits": 4, "rounds_per_visit": 25,
                             "tuning_sites": ["academic", "community"], "count_sites": ["academic", "community"],
                             "train_rows": 9000, "train_events": 1085}
    held = run["evaluation"].load_metrics()["held_out"]["xgboost"]
    other = VALIDATION | {"design": "network", "train_site": "academic + community", "eval_site": "community",
                          "run_id": None, "n": 1234, "events": 101,
                          "note": "the same model on community's held-out split (only these aggregates came back)"}
    worse = dict(VALIDATION["recalibrated"], brier=round(held["brier"] + 0.001, 4))
    context = build_context(run, training=training, validations=[other], recalibrated=worse)
    own, theirs = context["validations"]
    assert own["size"] == f"{held['n']:,} / {held['events']:,} ({held['events'] / held['n']:.1%})"
    assert own["recalibrated"] == (f"AUROC 0.712, Brier {worse['brier']:.4f}, slope 0.957, CITL 0.012 (Brier worse than "
                                   "as shipped: the calibrator refitted on the tuning split did not carry over)")
    assert theirs["size"] == "1,234 / 101 (8.2%)"
    assert theirs["recalibrated"] == "AUROC 0.712, Brier 0.0734, slope 0.957, CITL 0.012"  # 0.0734 < 0.0812 as shipped
    expected = metrics.between_sites([{"site": "academic", **held}, {"site": "community", **other}])
    summary = context["between_sites"]
    assert summary["sites"] == 2
    assert summary["range"] == f"{min(held['auroc'], 0.7123):.3f} to {max(held['auroc'], 0.7123):.3f}"
    assert summary["pooled"] == (f"{expected['pooled_auroc']:.3f} ({expected['pooled_ci_low']:.3f}–"
                                 f"{expected['pooled_ci_high']:.3f})")
    assert summary["i2"] == f"{expected['i2']:.0%}" and summary["prediction"] is None
    text = Page(render(context)).text
    # its sample size is the network's: the train events of every site that shared its counts
    columns = json.loads((run["matrix"].dir / "shape.json").read_text())["columns"]
    assert (f"Training events per candidate feature across the sites: {1085 / columns:.2f} (1,085 train events at "
            f"academic, community, {columns:,} features; this site's own: {context['epv']})") in text
    assert "held-out rows / events (rate)" in text and "1,234 / 101 (8.2%)" in text
    assert f"ranges from {summary['range']} across the 2 sites" in text
    assert "A prediction interval for a new site needs at least 3 sites." in text
    # A site's own report has no between-site summary (its rows are different models).
    assert build_context(run, validations=[other])["between_sites"] is None
    # Counts under 11 show as such and the rate is left out.
    assert build_context(run, training=training, validations=[other | {"events": None}])["validations"][1]["size"] == "1,234 / <11"


def test_recalibrated_cell_names_the_method_and_when_none_beat_the_shipped_risks():
    from forewarn.evaluation.report import _recalibrated_text

    shipped = {"auroc": 0.8, "brier": 0.05}
    recal = {"auroc": 0.8, "brier": 0.0490, "calibration_slope": 1.01, "calibration_in_the_large": 0.02}
    assert _recalibrated_text(shipped, recal | {"method": "sigmoid"}) == (
        "sigmoid: AUROC 0.800, Brier 0.0490, slope 1.010, CITL 0.020")
    assert _recalibrated_text(shipped, recal | {"method": "isotonic", "brier": 0.0512}) == (
        "isotonic: AUROC 0.800, Brier 0.0512, slope 1.010, CITL 0.020 (Brier worse than as shipped: the calibrator "
        "refitted on the tuning split did not carry over)")
    assert _recalibrated_text(shipped, recal | {"method": "shipped", "brier": 0.05}) == (
        "AUROC 0.800, Brier 0.0500, slope 1.010, CITL 0.020 (kept as shipped: no calibrator fitted on this site's "
        "tuning split beat the model's own there)")
    assert _recalibrated_text(shipped, recal | {"method": "none", "brier": 0.0495}) == (
        "AUROC 0.800, Brier 0.0495, slope 1.010, CITL 0.020 (the model's uncalibrated risks: on this site's tuning "
        "split they beat every calibrator fitted there and the model's own)")
    assert _recalibrated_text(shipped, None) == "not recalibrated"
    assert _recalibrated_text({"auroc": None}, recal) == "–"


def test_size_and_events_text_never_give_a_small_count_back():
    """A validation row's "rows / events (rate)": the rate only beside 11+ events, and
    events withheld (not "<11") where the non-events were the small count."""
    from forewarn.evaluation.report import _size_text

    assert _size_text({"n": 1234, "events": 101}) == "1,234 / 101 (8.2%)"
    assert _size_text({"n": 1234, "events": None}) == "1,234 / <11"
    assert _size_text({"n": 40, "events": None, "few_non_events": True}) == "40 / withheld"
    assert _size_text({"n": None, "events": None}) == "<11 / <11"
    assert _size_text({"design": "temporal", "note": "not run: ..."}) == "–"  # nothing was evaluated


def test_a_validation_that_could_not_run_says_so(run):
    """A temporal validation asked for but not run (too few train events before the
    cutoff) is a row that says why, and the report does not claim that none was asked for
    nor count it as a validation."""
    from forewarn.evaluation.report import render

    skipped = {"design": "temporal", "train_site": "academic", "eval_site": "academic", "recalibrated": None,
               "skipped": True, "note": "not run: the train split must hold at least 11 subjects with the outcome"}
    context = build_context(run, validations=[skipped])
    text = Page(render(context)).text
    assert "Internal validation only" in text
    assert "The temporal validation was asked for but could not run (its row says why)." in text
    assert "No temporal or external validation was supplied" not in text
    assert ("Internal validation only (held-out subjects of the same site): the temporal validation could not run "
            "(section 12 says why).") in context["limitations"]
    row = context["validations"][1]
    assert row["note"] == skipped["note"] and [row[k] for k in ("size", "auroc", "recalibrated")] == ["–"] * 3
    assert context["external_validations"] == 0


def test_the_registered_model_is_named_for_what_it_scores_with():
    """Tables and figures name the registered model by what it scores with: XGBoost, its
    blend with the L1-logistic, or at weight 1 the L1-logistic's ranking; and say when no
    calibrator was fitted, rather than "XGBoost (calibrated)" for all."""
    from forewarn.evaluation.evaluate import model_labels

    def labels(weight, method):
        got = model_labels({"xgboost": {"blend": {"weight": weight}}, "calibration": {"method": method}})
        return got["xgboost"], got["xgboost_uncalibrated"]

    assert labels(0.0, "isotonic") == ("XGBoost (calibrated)", "XGBoost (uncalibrated)")
    assert labels(0.4, "sigmoid") == ("XGBoost + L1 blend (calibrated)", "XGBoost + L1 blend (uncalibrated)")
    assert labels(1.0, "none") == ("Blend at weight 1 (L1-logistic) (no calibrator)",
                                   "Blend at weight 1 (L1-logistic) (uncalibrated)")
    assert model_labels(None)["xgboost"] == "XGBoost (calibrated)"


def test_a_calibrator_that_made_held_out_calibration_worse_is_a_limitation():
    from forewarn.evaluation.report import _calibrator_hurt

    stats = {"xgboost": {"brier": 0.0431, "calibration_in_the_large": 0.404},
             "xgboost_uncalibrated": {"brier": 0.0427, "calibration_in_the_large": -0.111}}
    assert _calibrator_hurt({"calibration_stats": stats}) == (
        "On the held-out split the calibrator fitted on the tuning split left the risks less well calibrated than the "
        "model's raw ones (Brier 0.0431 against 0.0427; calibration-in-the-large 0.404 against -0.111; section 8 shows "
        "both): it did not carry over from the tuning rows, so treat the absolute risks with caution.")
    stats["xgboost"]["brier"] = 0.0427  # no worse at the Brier's four decimals
    assert _calibrator_hurt({"calibration_stats": stats}) is None
    assert _calibrator_hurt({}) is None


def test_intended_use_and_the_study_s_statements_fill_the_checklist(run):
    from forewarn.evaluation.report import render
    from forewarn.flows.study import Reporting

    unstated = build_context(run)
    assert unstated["intended_use"] is None
    assert unstated["limitations"][-2] == (
        "The study file does not state the model's intended use, ethics approval, registration and protocol, funding and "
        "the funders' role, conflicts of interest, patient and public involvement or data and code availability (its "
        "“reporting” section): the site completes them before a reviewer signs.")
    html = render(unstated)
    assert html.count("to be completed by the site") == 7
    assert "not stated in the study file (reporting.intended_use." + run["spec"].name + ")" in html

    reporting = Reporting(intended_use={run["spec"].name: "Primary care <teams>; an alert prompts an HbA1c test."},
                          ethics="Approved by REC 21/AB/0001.", funding="None.")
    context = build_context(run, reporting=reporting.for_task(run["spec"].name))
    assert context["limitations"][-2].startswith(
        "The study file does not state registration and protocol, conflicts of interest, patient and public involvement "
        "or data and code availability (its")
    html = render(context)
    assert "(as the study states it): Primary care &lt;teams&gt;; an alert prompts an HbA1c test.</p>" in html
    assert '<td class="l">Ethics approval (committee and reference) or why none was needed</td><td class="l">Approved by REC ' \
           '21/AB/0001.</td>' in html
    assert "<td class=\"l\">Funding and the funders&#39; role</td><td class=\"l\">None.</td>" in html
    assert html.count("to be completed by the site") == 4
    assert "reporting.intended_use" not in html

    everything = Reporting(intended_use={run["spec"].name: "x"}, **{k: "y" for k in
                           ("ethics", "registration", "funding", "conflicts_of_interest", "public_involvement",
                            "data_availability")})
    context = build_context(run, reporting=everything.for_task(run["spec"].name))
    assert not any("does not state" in x for x in context["limitations"])
    assert "to be completed by the site" not in render(context)


def test_the_checklist_maps_tripod_ai_items_to_sections(run, full, plain):
    for page in (full, plain):
        assert ('<tr><td class="l">Model output: a calibrated risk per prediction time, and the alert it raises at an '
                'operating point</td><td class="l"><a href="#calibration">8</a>, <a href="#utility">9</a></td></tr>') in page
        assert "<td class=\"l\">Access to the full model</td><td class=\"l\">the registered model in MLflow" in page
        assert 'development and held-out data compared</td><td class="l"><a href="#characteristics">3</a>' in page
    # Heterogeneity across sites: the validation table when another site's data is in it.
    assert '<td class="l">Heterogeneity across sites</td><td class="l"><a href="#validation">12</a>' in full
    assert ('<td class="l">Heterogeneity across sites</td><td class="l">not assessed across sites (no other site\'s data '
            'in this report); subgroups: <a href="#subgroups">10</a>') in plain
    # The site's model names its version in the promotion section; the network's model at a site is the registry's own.
    assert "the registered model in MLflow, named with its version in <a href=\"#promotion\">15</a>; its trees" in full
    blended = run["trained"].blend_path.exists() and json.loads(run["trained"].blend_path.read_text()).get("weight")
    assert ("the registered model in MLflow; its trees, calibrator and columns" + (
        ", the L1-logistic it blends with (its weights on the unscaled features) and the blend's weight" if blended
        else "") + " are this run's model_inputs") in plain


def test_short_labels_keep_each_feature_of_a_long_concept_apart():
    from forewarn.evaluation.plots import short_label

    concept = ("Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by "
               "Creatinine-based formula (CKD-EPI) (LOINC 62238-1)")
    labels = [short_label(f"{concept}, {agg}, {w}") for agg in ("mean value", "minimum", "last value") for w in ("30 days", "365 days")]
    assert labels[0] == "Glomerular filtration rate/1.73… (LOINC 62238-1), mean value, 30 days"
    assert len(set(labels)) == 6 and all(len(x) <= 70 for x in labels)
    assert short_label("Colonoscopy, flexible; diagnostic (CPT4 45378), count, 30 days") == (
        "Colonoscopy, flexible; diagnostic (CPT4 45378), count, 30 days")  # short enough: as it is
    assert short_label("x" * 100) == "x" * 69 + "…"  # no code part: cut at the end


def test_the_operating_point_moves_to_the_nearest_published_budget():
    from forewarn.evaluation.evaluate import operating_label, operating_point

    def row(budget, threshold, tp):
        return {"kind": "alert budget", "alert_budget": budget, "threshold": threshold, "tp": tp}

    fixed = {"kind": "threshold", "alert_budget": None, "threshold": 0.5, "tp": 40}
    p = np.linspace(0, 1, 101)
    # 5% published: it is the operating point.
    assert operating_point([fixed, row(0.01, 0.9, None), row(0.05, 0.8, 38), row(0.10, 0.6, 60)], p, 0.05) == (0.8, 0.05)
    # 5% withheld (38 true and 3 false alerts, say): 10% first, being larger ...
    assert operating_point([fixed, row(0.01, 0.9, 12), row(0.05, 0.8, None), row(0.10, 0.6, 60)], p, 0.05) == (0.6, 0.10)
    # ... then the smaller ones, nearest first.
    assert operating_point([row(0.01, 0.9, 12), row(0.02, 0.85, 20), row(0.05, 0.8, None), row(0.10, 0.6, None)],
                           p, 0.05) == (0.85, 0.02)
    # None published: the 5% budget's threshold all the same.
    assert operating_point([row(0.05, 0.8, None), row(0.10, 0.6, None)], p, 0.05) == (0.8, 0.05)
    assert operating_label(0.05, 0.05) == "5% alert budget"
    assert operating_label(0.10, 0.05) == "10% alert budget (the 5% budget's 2×2 table is withheld here)"


def test_the_decision_curve_note_names_what_the_figure_draws_beyond_the_table():
    from forewarn.evaluation.report import _net_benefit_drawn

    at = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.26, 0.3]
    rows = [{"threshold": t, "net_benefit_model": 0.02 if t in (0.001, 0.002, 0.26) else None} for t in at]
    # community CKD's case: every table cell "–", yet three points drawn
    assert _net_benefit_drawn({"decision_curve": rows}) == (
        "The figure draws the model's net benefit at 3 of the 9 thresholds computed (of which 0.1%, 0.2% and 26% are "
        "not in this table); the others are withheld by the rule above.")
    one = [dict(r, net_benefit_model=0.02 if r["threshold"] in (0.001, 0.05) else None) for r in rows]
    assert _net_benefit_drawn({"decision_curve": one}) == (
        "The figure draws the model's net benefit at 2 of the 9 thresholds computed (of which 0.1% is not in this "
        "table); the others are withheld by the rule above.")
    assert _net_benefit_drawn({"decision_curve": [dict(r, net_benefit_model=None) for r in rows]}) is None
    assert _net_benefit_drawn({"decision_curve": [{"threshold": 0.05, "net_benefit_model": 0.01}]}) == (
        "The figure draws the model's net benefit at 1 of the 1 thresholds computed.")


def test_shap_method_names_what_the_values_explain():
    from forewarn.evaluation.plots import shap_method

    assert [shap_method(w) for w in (0.0, 0.3, 1.0)] == [
        "TreeSHAP", "TreeSHAP and linear SHAP", "linear SHAP of the L1-logistic"]


def test_the_data_section_compares_with_the_previous_pull_and_the_summary_flags_a_moved_feed(run, plain):
    from forewarn.evaluation.report import render

    current = json.loads(run["pull"].report_path.read_text())
    assert "No earlier pull of this site with other data to compare with." in Page(plain).text
    assert 'id="pull-alert"' not in plain
    if any(privacy.suppress(t[k]) is None for t in current["tables"].values() for k in ("kept", "quarantined")):
        pytest.skip("this fixture's per-table counts are withheld")
    before = json.loads(json.dumps(current))
    table = max(before["tables"], key=lambda t: before["tables"][t]["kept"])
    kept = current["tables"][table]["kept"]
    before["tables"][table] |= {"read": 2 * kept, "kept": 2 * kept}  # the feed has lost half its rows since
    page = render(build_context(run, previous_pull={"date": "2026-12-03", **before}))
    alert = Page(_section(page, "summary")).text
    assert (f"The data changed since the previous pull (2026-12-03) : {table} kept {kept:,} rows (about -50%). A feed "
            "that gained or lost this much") in alert
    data = Page(_section(page, "data")).text
    assert f"{table} (flagged) {kept:,} about -50%" in data
    assert f"{2 * kept:,}" not in page  # the earlier count itself is never shown
    assert "a change of 20% or more either way (or a table new or emptied) is flagged" in data
    # Nothing moved: the table is shown, nothing is flagged.
    same = render(build_context(run, previous_pull={"date": "2026-12-03", **current}))
    assert 'id="pull-alert"' not in same and "(flagged)" not in same and "about +0%" in same


def test_a_pull_change_is_coarse_where_a_table_is_small():
    from forewarn.evaluation.report import _pull_change_text

    def c(before, now):
        change = None if before == 0 else round(now / before - 1, 4)
        return {"previous": before, "now": now, "change": change,
                "flagged": (before == 0) != (now == 0) or (change is not None and abs(change) >= 0.2)}

    assert [_pull_change_text(c(*x)) for x in [(2400, 1200), (2000, 2100), (1099, 2000), (500, 480), (0, 0), (0, 5),
                                               (40, 0)]] == [
        "about -50%", "about +0%", "20% or more", "under 20%", "–", "new", "emptied"]


@pytest.fixture(scope="module")
def uncalibrated_run(run, tmp_path_factory):
    """The fixture's model trained again with no calibrator (``calibration: none``)."""
    from forewarn.evaluation.evaluate import EvaluationConfig, evaluate_and_explain
    from forewarn.models.train import ModelConfig, train_models

    work = tmp_path_factory.mktemp("uncalibrated")
    trained = train_models(run["matrix"], work / "models", ModelConfig(n_jobs=1, calibration="none"))
    evaluation = evaluate_and_explain(run["matrix"], trained, work / "evaluation",
                                      EvaluationConfig(bootstrap=20, shap_rows=200), site=run["site"],
                                      outcomes_path=run["labels"].outcomes_path)
    return run | {"trained": trained, "evaluation": evaluation}


def test_without_a_calibrator_the_uncalibrated_row_is_not_repeated(uncalibrated_run):
    from forewarn.evaluation.evaluate import PRIMARY, model_labels
    from forewarn.evaluation.report import render

    run = uncalibrated_run
    training = json.loads(run["trained"].summary_path.read_text())
    assert training["calibration"]["method"] == "none"
    name = model_labels(training)[PRIMARY]
    assert name.endswith("(no calibrator)")
    context = build_context(run)
    blended = bool(training["xgboost"]["blend"]["weight"])
    assert [m["key"] for m in context["models"]] == ["xgboost", *(["xgboost_trees"] if blended else []), "l1_logistic",
                                                    "age_sex"]
    assert all("uncalibrated" not in s["name"] for s in context["calibration_stats"])
    summary = Page(_section(render(context), "summary")).text
    assert name in summary and "(uncalibrated)" not in summary
    assert "No calibrator beat the model's raw risks on the tuning split" in summary
    # With a calibrator the raw model is another row (the fixture's record holds its metrics).
    calibrated = build_context(run, training=training | {"calibration": training["calibration"] | {"method": "isotonic"}})
    base = name.removesuffix(" (no calibrator)")
    assert [m["name"] for m in calibrated["models"]][:2] == [f"{base} (calibrated)", f"{base} (uncalibrated)"]
    assert "The uncalibrated model has the same ranking, so the same AUROC." in Page(render(calibrated)).text


def test_the_promotion_section_shows_the_champion_beside_the_candidate_on_the_same_rows(run, full):
    from forewarn.evaluation.report import render

    assert 'id="beside-champion"' not in full  # the flow did not score a champion here
    champion = {"auroc": 0.794, "auroc_ci_low": 0.75, "auroc_ci_high": 0.83, "auprc": 0.41, "auprc_ci_low": 0.33,
                "auprc_ci_high": 0.5, "brier": 0.07123, "calibration_slope": 1.05, "calibration_in_the_large": -0.02}
    page = render(build_context(run, promotion=PROMOTION | {"champion_metrics": champion}))
    table = Page(page[page.index('id="beside-champion"'):page.index("</table>", page.index('id="beside-champion"'))]).text
    assert "champion v1 0.794 (0.750–0.830) 0.410 (0.330–0.500) 0.0712 1.050 -0.020" in table
    assert "this run's model (v2) " in table
    # Withheld where the held-out split holds 1..10 events: the champion's metrics are too.
    withheld = dict.fromkeys(champion) | {"withheld": True}
    page = render(build_context(run, promotion=PROMOTION | {"champion_metrics": withheld}))
    assert "champion v1 withheld" in Page(page).text


def table_rows(section: str) -> list[list[str]]:
    """The cells of each table row of a page's ``section`` (after its first table header)."""
    return [Page(f"<table><tr>{row.split('</tr>')[0]}</tr></table>").cells for row in section.split("<tr>")[1:]]


def test_a_learning_curve_that_falls_beyond_chance_says_so():
    from forewarn.evaluation.report import _learning_curve

    def d(diff, low, high):
        return {"difference": diff, "ci_low": low, "ci_high": high}

    step = {"from": 50.0, "to": 100.0, "level": 0.9875,
            "xgboost": {"auroc": d(-0.045, -0.099, -0.002), "auprc": d(-0.044, -0.103, 0.010)},
            "l1_logistic": {"auroc": d(0.009, -0.006, 0.024), "auprc": d(0.036, 0.007, 0.067)}}
    learners = {"xgboost": "XGBoost trees", "l1_logistic": "L1-logistic"}
    text = _learning_curve({"learning_curve": {"learners": learners, "points": [], "last_step": step}})["text"]
    assert "changed by -0.045 (-0.099 to -0.002) for the XGBoost trees and +0.009 (-0.006 to +0.024) for the L1-logistic" in text
    assert "A gain beyond chance at the last step" in text  # the L1's AUPRC
    assert "The XGBoost trees lost beyond chance at the last step (a paired interval below 0)." in text
    assert "L1-logistic lost" not in text
    step["xgboost"]["auroc"] = d(-0.01, -0.05, 0.0)  # an interval reaching 0 is no loss beyond chance
    text = _learning_curve({"learning_curve": {"learners": learners, "points": [], "last_step": step}})["text"]
    assert "lost beyond chance" not in text


def test_the_learning_curve_is_a_table_and_a_figure_under_sample_size(run, tmp_path, plain):
    """With ``learning_curve.fractions`` the evaluation refits the learners on shares of
    the train subjects; section 4 shows each point's sizes and metrics, the figure, and
    the last step in words. Without, there is no such section."""
    from forewarn.evaluation.evaluate import EvaluationConfig, evaluate_and_explain
    from forewarn.evaluation.report import render
    from forewarn.models.train import ModelConfig

    config = EvaluationConfig(bootstrap=20, shap_rows=200, learning_curve={"fractions": [0.05, 0.5, 1.0]})
    evaluation = evaluate_and_explain(run["matrix"], run["trained"], tmp_path / "evaluation", config, site=run["site"],
                                      models=ModelConfig(n_jobs=1))
    curve = evaluation.load_metrics()["learning_curve"]
    small, half, whole = curve["points"]
    assert small["fitted"] is False and (half["fitted"], whole["fitted"]) == (True, True)
    assert (evaluation.dir / "figures" / "learning_curve.png").is_file()
    page = render(build_context(run, evaluation=evaluation))
    section = html.unescape(_section(page, "outcome"))
    text = Page(section).text
    assert "Learning curve" in text
    rows = {r[0]: r for r in table_rows(section)}
    assert rows["5%"][1:] == ["<11" if small["subjects"] is None else f"{small['subjects']:,}",
                              "<11" if small["rows"] is None else f"{small['rows']:,}",
                              "<11" if small["event_subjects"] is None else f"{small['event_subjects']:,}",
                              f"not fitted: {small['reason']}"]
    xgb, l1 = whole["held_out"]["xgboost"], whole["held_out"]["l1_logistic"]
    assert rows["100%"] == [
        "100%", f"{whole['subjects']:,}", f"{whole['rows']:,}", f"{whole['event_subjects']:,}", str(whole["trees"]),
        f"{xgb['auroc']:.3f} ({xgb['auroc_ci_low']:.3f}–{xgb['auroc_ci_high']:.3f})",
        f"{xgb['auprc']:.3f} ({xgb['auprc_ci_low']:.3f}–{xgb['auprc_ci_high']:.3f})",
        f"{whole['apparent']['xgboost']['auroc']:.3f}",
        f"{l1['auroc']:.3f} ({l1['auroc_ci_low']:.3f}–{l1['auroc_ci_high']:.3f})",
        f"{l1['auprc']:.3f} ({l1['auprc_ci_low']:.3f}–{l1['auprc_ci_high']:.3f})",
        f"{whole['apparent']['l1_logistic']['auroc']:.3f}"]
    step = curve["last_step"]

    def change(learner, metric):
        d = step[learner][metric]
        return f"{d['difference']:+.3f} ({d['ci_low']:+.3f} to {d['ci_high']:+.3f})"

    assert (f"From 50% to 100% of the train subjects the held-out AUROC changed by {change('xgboost', 'auroc')} for the "
            f"XGBoost trees and {change('l1_logistic', 'auroc')} for the L1-logistic; the AUPRC by "
            f"{change('xgboost', 'auprc')} for the XGBoost trees and {change('l1_logistic', 'auprc')} for the "
            "L1-logistic (paired patient-bootstrap intervals at 98.75%: 95% over the four together).") in " ".join(text.split())
    from forewarn.evaluation.learning_curve import rising

    verdict = "A gain beyond chance at the last step" if rising(step) else "No gain beyond chance at the last step"
    assert verdict in text
    assert section.count("<img") == 1 and 'alt="Learning curve"' in section
    assert 'id="learning-curve"' not in plain and "Learning curve" not in plain
    # the TRIPOD+AI checklist links the curve beside the sample size
    assert '<a href="#outcome">4</a>, <a href="#learning-curve">4</a>' in page
    assert '#learning-curve' not in plain


def test_the_network_report_says_what_each_site_process_sent():
    from forewarn.evaluation.report import _boundary_text

    boundary = {"kind": "process", "answers": {
        "north": {"columns": {"answers": 1, "bytes": 4000}, "platt_sums": {"answers": 17, "bytes": 3890},
                  "boost": {"answers": 3, "bytes": 40960},
                  "tuning_logloss": {"answers": 6, "bytes": 150}},
        "south": {"label_counts": {"answers": 2, "bytes": 74}, "boost": {"answers": 2, "bytes": 20480}}}}
    assert _boundary_text(boundary) == (
        "; each site answered from a process of its own, which held its rows and refused any other call: north sent 3 "
        "models with its trees added, 6 tuning log-losses, 17 Platt gradient and Hessian sums (48 kB in all); south "
        "sent 2 models with its trees added, 2 train label counts (20 kB in all)")
    assert _boundary_text({"kind": "in-process", "answers": {}}) == "" and _boundary_text(None) == ""


def test_a_waterfall_ends_at_the_row_s_log_odds_with_the_other_features_as_one_bar():
    from forewarn.evaluation.plots import shap_waterfall, waterfall_parts

    row = np.array([0.5, -1.0, 0.2, 0.1, 0.05])
    values, names = waterfall_parts(row, np.array([0, 1, 2]), ["a", "b", "c"], bars=3)
    # the two plotted features that move the row most, then the other three together
    np.testing.assert_allclose(values, [-1.0, 0.5, 0.35])
    assert names == ["b", "a", "3 other features"] and values.sum() == pytest.approx(row.sum())
    # every column drawn: no remainder
    values, names = waterfall_parts(row[:3], np.array([0, 1, 2]), ["a", "b", "c"], bars=4)
    assert names == ["b", "a", "c"] and values.tolist() == [-1.0, 0.5, 0.2]
    # one column left over would show that column's own value for this row: two go together
    values, names = waterfall_parts(row[:3], np.array([0, 1, 2]), ["a", "b", "c"], bars=3)
    assert names == ["b", "2 other features"] and values.tolist() == pytest.approx([-1.0, 0.7])
    png = shap_waterfall(row, np.array([0, 1, 2]), ["a", "b", "c"], base=-2.0)
    assert png.startswith(b"\x89PNG")


def test_a_temporal_run_s_report_shows_its_cutoff_its_rows_and_its_numbers():
    """``validation_context`` for the temporal design, from the temporal stage's record as
    the flow logs it (numbers by hand): the cutoff, the development rows and events, the
    times left out across the cutoff (a count under 11 shown as such), no subgroups."""
    from forewarn.evaluation.report import validation_context, write_report
    from forewarn.features.labels import load_task

    record = {"auroc": 0.8123, "auroc_ci_low": 0.78, "auroc_ci_high": 0.85, "auprc": 0.41, "auprc_ci_low": 0.35,
              "auprc_ci_high": 0.47, "brier": 0.05432, "calibration_slope": 0.91, "calibration_in_the_large": -0.12,
              "model_based_auroc": 0.83, "ece": 0.01, "ici": 0.012, "e90": 0.03, "n": 1200, "events": 80,
              "withheld": False, "cutoff": "2021-07-01", "development": {"rows": 5400, "events": 7},
              "crosses_cutoff": 950}
    attrition = {"candidates": {"times": 9000, "subjects": 3000}, "labelled": {"times": 7550, "subjects": 3000},
                 "positive": {"times": 500, "subjects": 480}}
    common = dict(site="academic", task=load_task("t2d_2y"), attrition=attrition, data_digest="d" * 16,
                  features={"columns": "1,234", "windows": "30d, 365d", "aggs": "count, last"}, code_version="0+x",
                  generated_at="2026-12-05 19:00 UTC", mlflow_run_id="r1",
                  model={"name": "forewarn-t2d_2y-academic", "version": None, "site": "academic", "study": "s",
                         "run_id": None, "ref": None})
    context = validation_context(record=record, design="temporal", **common)
    assert context["period"] == {"cutoff": "2021-07-01", "development_rows": "5,400", "development_events": "<11",
                                 "crosses_cutoff": "950"}
    assert [r["label"] for r in context["rows"]] == ["refitted on the times before 2021-07-01"]
    assert (context["rows"][0]["auroc"], context["rows"][0]["size"]) == ("0.812 (0.780–0.850)", "1,200 / 80 (6.7%)")
    assert context["subgroups"] == [] and context["figure"] is None
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        page = Page(write_report(context, Path(folder) / "r.html", template="validation.html.j2").read_text())
    plain = html.unescape(page.text)
    assert not page.errors
    assert "t2d_2y: temporal validation of forewarn-t2d_2y-academic at site “academic”" in plain
    assert ("refitted with the same settings, without a hyperparameter search, on this site's prediction times whose "
            "horizon ends before 2021-07-01: 5,400 train and tuning rows, <11 with the outcome") in plain
    assert "950 times whose horizon crosses the cutoff are in neither" in plain
    assert "AUROC 0.812 (0.780–0.850), AUPRC 0.410 (0.350–0.470), calibration slope 0.910" in plain
    assert "Not computed in the temporal design" in plain and "recalibrat" not in plain.lower()
    assert context["did_not_hold"] == []  # slope 0.91 and CITL -0.12: within the bands
    decayed = validation_context(record=record | {"calibration_slope": 0.705}, design="temporal", **common)
    assert decayed["did_not_hold"] == [
        "Over time the model did not hold: trained on the earlier times and tested on the later ones, calibration "
        "slope 0.705 (risks too extreme) (section 3). Recalibrate or retrain on recent data before relying on its risks."]
    with tempfile.TemporaryDirectory() as folder:
        page = Page(write_report(decayed, Path(folder) / "r.html", template="validation.html.j2").read_text())
    assert decayed["did_not_hold"][0] in html.unescape(page.text)
    with pytest.raises(ValueError, match="design must be one of registered, external, temporal; got 'network'"):
        validation_context(record=record, design="network", **common)


def test_a_validation_that_did_not_hold_is_a_limitation_with_its_numbers():
    """Temporal or external numbers beyond the bands (slope outside 0.8-1.25, CITL beyond
    ±0.2, AUROC 0.05 below the held-out split's) each become a limitation that names them."""
    from forewarn.evaluation.report import _did_not_hold

    held = {"auroc": 0.907}
    temporal = {"design": "temporal", "auroc": 0.831, "calibration_slope": 0.705, "calibration_in_the_large": -0.494}
    external = {"design": "external", "eval_site": "community", "auroc": 0.885, "calibration_slope": 1.18,
                "calibration_in_the_large": 0.214}
    fine = {"design": "external", "eval_site": "rural", "auroc": 0.88, "calibration_slope": 0.95,
            "calibration_in_the_large": 0.1}
    withheld = {"design": "external", "eval_site": "tiny", "withheld": True, "auroc": None}
    assert _did_not_hold([temporal, external, fine, withheld], held) == [
        "Over time the model did not hold: trained on the earlier times and tested on the later ones, AUROC 0.831 "
        "against 0.907 on this site's held-out split, calibration slope 0.705 (risks too extreme), "
        "calibration-in-the-large -0.494 (risks too high on average) (section 12). Recalibrate or retrain on recent "
        "data before relying on its risks.",
        "At community (external validation, section 12) the model as shipped did not hold: calibration-in-the-large "
        "0.214 (risks too low on average). Recalibrate it there (its row after recalibration) or train with that "
        "site's data before using it there.",
    ]
    assert _did_not_hold([fine], held) == []


def test_each_baseline_is_compared_with_the_registered_model_on_the_same_rows(run, full):
    """Section 7's last column: the registered model's AUROC and AUPRC minus each
    baseline's on the same held-out rows, with paired patient-bootstrap intervals."""
    from forewarn.evaluation import metrics
    from forewarn.evaluation.evaluate import held_out_frame
    from forewarn.models.train import AGE_SEX, BASELINE, PRIMARY

    record = run["evaluation"].load_metrics()
    primary = held_out_frame(run["trained"], PRIMARY)
    y = primary[schema.BOOLEAN_VALUE].to_numpy(bool)
    text = Page(full).text
    assert "minus this model (paired 95% CI)" in text
    assert record["held_out"][PRIMARY].get("paired") is None  # not against itself
    for model in (BASELINE, AGE_SEX):
        other = held_out_frame(run["trained"], model)
        expected = metrics.paired_differences(
            y, primary[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float),
            other[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float), primary[schema.SUBJECT_ID].to_numpy(),
            n_boot=20, seed=0)  # the run's EvaluationConfig(bootstrap=20)
        paired = record["held_out"][model]["paired"]
        for key in ("auroc", "auprc"):
            assert paired[key]["difference"] == pytest.approx(
                record["held_out"][PRIMARY][key] - record["held_out"][model][key])
            assert paired[key]["ci_low"] <= paired[key]["difference"] <= paired[key]["ci_high"]
        for key in ("auroc", "auprc"):
            assert paired[key] == pytest.approx(expected[key])
        a = paired["auroc"]
        assert f"AUROC {a['difference']:+.3f} ({a['ci_low']:+.3f} to {a['ci_high']:+.3f})" in text


def test_the_trees_alone_are_evaluated_beside_the_blend_they_are_part_of(run, full):
    """The registered model's trees without the L1-logistic (weight 0), uncalibrated: their
    held-out record and the paired comparison in metrics.json, and their row in section 7
    when the model is a blend (unblended they are the uncalibrated model itself)."""
    from sklearn.metrics import roc_auc_score

    from forewarn.evaluation.evaluate import held_out_frame
    from forewarn.evaluation.report import render
    from forewarn.models.train import PRIMARY, TREES, load_primary

    record = run["evaluation"].load_metrics()
    trees = held_out_frame(run["trained"], TREES)
    X, rows, _ = run["matrix"].load()
    held = np.flatnonzero(rows[schema.SPLIT].to_numpy() == schema.HELD_OUT)
    expected = 1 / (1 + np.exp(-load_primary(run["trained"]).tree_margin(X[held])))
    assert trees[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float) == pytest.approx(expected)
    y = trees[schema.BOOLEAN_VALUE].to_numpy(bool)
    assert record["held_out"][TREES]["auroc"] == pytest.approx(roc_auc_score(y, expected))
    paired = record["held_out"][TREES]["paired"]["auroc"]
    assert paired["difference"] == pytest.approx(record["held_out"][PRIMARY]["auroc"] - record["held_out"][TREES]["auroc"])
    training = json.loads(run["trained"].summary_path.read_text())
    for weight in (0.0, 0.4):
        summary = training | {"xgboost": training["xgboost"] | {"blend": training["xgboost"]["blend"] | {"weight": weight}}}
        context = build_context(run, training=summary)
        names = [m["name"] for m in context["models"]]
        assert ("XGBoost trees alone (not registered)" in names) == bool(weight), (weight, names)
    context = build_context(run, training=summary)  # weight 0.4
    text = Page(_section(render(context), "performance")).text
    a = paired
    assert "XGBoost trees alone (not registered)" in text and "never served" in text
    assert f"AUROC {a['difference']:+.3f} ({a['ci_low']:+.3f} to {a['ci_high']:+.3f})" in text


def test_an_operating_point_and_its_risk_share_one_parenthesis():
    from forewarn.evaluation.report import _at_risk, _subgroup_point

    assert _at_risk("5% alert budget", "0.157") == "5% alert budget (risk ≥ 0.157)"
    assert _at_risk("10% alert budget (the 5% budget's 2×2 table is withheld here)", "0.157") == (
        "10% alert budget (risk ≥ 0.157; the 5% budget's 2×2 table is withheld here)")
    assert _subgroup_point({"subgroup_threshold": {"threshold": 0.2, "operating_point": "5% alert budget"}}) == (
        "5% alert budget (risk ≥ 0.200)")
    assert _subgroup_point({}) is None
