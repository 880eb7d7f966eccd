"""The nightly flow end to end under a real Prefect engine and a real MLflow store.

One module-scoped run of the flow on a small two-site demo network (run twice, to see
the registry keep its champion), then checks on what MLflow, the registry, the UI and
the report hold, and that no identifier from the source reaches any output.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from html import unescape
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import flow_workdir, store_client

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory, demo_network, prefect_server):
    work = tmp_path_factory.mktemp("work")
    with flow_workdir(work, tmp_path_factory.mktemp("prefect-home")):  # the default store is <work>/mlruns
        from forewarn.flows.nightly import nightly
        from forewarn.flows.study import parse_study

        def study_for(network):
            return parse_study(
                {
                    "name": "e2e",
                    "demo": True,
                    "tasks": ["t2d_2y"],
                    "sites": [{"name": n, "source": {"location": str(p)}} for n, p in network.items()],
                    "evaluation": {"bootstrap": 50, "shap_rows": 300, "learning_curve": {"fractions": [0.5, 1.0]}},
                    "models": {"n_jobs": 2, "search": {"trials": 2}},
                    # A first champion's held-out slope must lie within the bounds, and on this
                    # small network's held-out sets (a few dozen events) the first T2D models'
                    # slopes have fallen just outside the defaults (0.69 at academic, 1.59 at
                    # community): the bounds opened, as the resume and scoring tests do.
                    "promotion": {"slope_low": 0.5, "slope_high": 2.0},
                    "validation": {"designs": ["internal", "external", "temporal", "network"], "temporal_from": "2021-07-01"},
                    "reporting": {"intended_use": {"t2d_2y": "E2E: adults at outpatient visits; an alert prompts an HbA1c."},
                                  "ethics": "Not needed: synthetic records."},
                },
                base_dir=work,
            )

        study = study_for(demo_network)
        degraded = study_for(degrade(demo_network, work / "degraded"))
        first = nightly(study)
        second = nightly(degraded)  # the same sites, with most labs and the prediabetes codes gone
        yield {"work": work, "study": degraded, "first": first, "second": second}


def degrade(network: dict[str, Path], folder: Path) -> dict[str, Path]:
    """Copies of the sites' databases that lost most of their signal (and none of their labels)."""
    import shutil

    out = {}
    for name, db in network.items():
        (folder / name).mkdir(parents=True)
        out[name] = shutil.copy(db, folder / name / "omop.duckdb")
        con = duckdb.connect(str(out[name]))
        # Nine labs in ten go, but not the HbA1c and fasting glucose results at or above
        # the diagnostic cut-offs: t2d_2y's outcome reads them, and with them its labels
        # (and so the people ledger's groups) stay the first night's.
        con.execute("DELETE FROM measurement WHERE measurement_id % 10 <> 0 AND NOT ("
                    "(measurement_concept_id = 3004410 AND value_as_number >= 6.5) OR "
                    "(measurement_concept_id = 3037110 AND value_as_number >= 126))")
        con.execute("DELETE FROM condition_occurrence WHERE condition_source_value IN ('R73.03')")
        con.close()
    return {k: Path(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def client(flow_run):
    return store_client(flow_run["work"])


def test_default_store_is_mlruns_under_the_working_directory(flow_run):
    mlruns = flow_run["work"] / "mlruns"
    assert (mlruns / "mlflow.db").is_file()
    assert any((mlruns / "artifacts").rglob("report.html"))


def test_each_internal_run_charts_its_learning_curve_by_training_size(flow_run, client):
    """``evaluation.learning_curve``: each site's run holds the curve as metrics stepped by
    the percent of train subjects, and its report the table and figure."""
    exp = client.get_experiment_by_name("forewarn/t2d_2y")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`forewarn.validation_design` = 'internal'")
    for run in runs:
        curve = json.loads(Path(client.download_artifacts(run.info.run_id, "metrics.json")).read_text())["learning_curve"]
        assert [p["percent"] for p in curve["points"] if p["fitted"]] == [50.0, 100.0]
        for learner in ("xgboost", "l1_logistic"):
            history = client.get_metric_history(run.info.run_id, f"learning_curve/{learner}/auroc")
            assert sorted((m.step, m.value) for m in history) == [
                (int(p["percent"]), p["held_out"][learner]["auroc"]) for p in curve["points"]]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
        assert "figures/learning_curve.png" in artifacts
        report = Path(client.download_artifacts(run.info.run_id, "report.html")).read_text()
        assert 'id="learning-curve"' in report


def test_every_validation_row_shows_its_model_based_auroc(flow_run, client):
    """Section 12 shows each design's model-based AUROC beside its AUROC: the number the
    design's own MLflow run holds (external, temporal and network rows alike)."""
    exp = client.get_experiment_by_name("forewarn/t2d_2y")
    checked = []
    for result in flow_run["second"]:
        if result.report_path is None or result.task != "t2d_2y":
            continue
        checked.append(result.site)
        page = result.report_path.read_text()
        section = page[page.index('id="validation"'):page.index('id="limitations"')]
        rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in section.split("<tr>")[2:]]
        shown = {}
        for cells in rows:
            design, evaluated_at, model_based = unescape(cells[0]), cells[2], cells[5]
            shown[(design.split(" ")[0], evaluated_at)] = model_based
        assert set(shown.values()) != {"–"} and all(re.fullmatch(r"0\.\d{3}", v) for v in shown.values()), shown
        for design in ("external", "temporal"):
            runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], filter_string=(
                f"tags.`forewarn.validation_design` = '{design}' AND tags.`forewarn.train_site` = '{result.site}'"
                if design == "external" else
                f"tags.`forewarn.validation_design` = '{design}' AND tags.`forewarn.site` = '{result.site}'"))
            latest = runs[0].data
            where = latest.tags["forewarn.site"]
            assert shown[(design, where)] == f"{latest.metrics['held_out/model_based_auroc']:.3f}", (design, shown)
    assert sorted(checked) == ["academic", "community"]


VARYING = ("drift/", "promotion/auroc_difference", "champion/", "held_out/gap/")


def test_one_run_per_site_with_the_same_metric_names(flow_run, client):
    exp = client.get_experiment_by_name("forewarn/t2d_2y")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`forewarn.validation_design` = 'internal'")
    assert len(runs) == 4
    assert sorted(r.data.tags["forewarn.site"] for r in runs) == ["academic", "academic", "community", "community"]
    # Present only where there is something to compare: drift and the paired difference with
    # a champion; the fairness summary's gaps where a column has two published levels.
    names = {frozenset(k for k in r.data.metrics if not k.startswith(VARYING)) for r in runs}
    assert len(names) == 1
    # The champion's metrics on the same rows need a champion: the second night's runs hold them.
    beside = {frozenset(k for k in r.data.metrics if k.startswith("champion/")) for r in runs}
    assert beside == {frozenset(), frozenset(f"champion/held_out/{k}" for k in (
        "auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "brier", "calibration_slope", "calibration_in_the_large"))}
    # The paired difference needs a champion too: the second night's runs hold it.
    paired = {frozenset(k for k in r.data.metrics if k.startswith("promotion/auroc_difference")) for r in runs}
    assert paired == {frozenset(), frozenset({"promotion/auroc_difference", "promotion/auroc_difference_ci_low",
                                              "promotion/auroc_difference_ci_high"})}
    # Drift needs a champion to compare with: the second night has the whole set.
    drift = {frozenset(k for k in r.data.metrics if k.startswith("drift/")) for r in runs}
    assert drift == {frozenset({"drift/detected"}), frozenset({
        "drift/detected", "drift/max_psi", "drift/features_drifted", "drift/prevalence_relative_change",
        "drift/vocabulary_lost", "drift/vocabulary_new", "drift/vocabulary_jaccard"})}
    metrics = runs[0].data.metrics
    for key in ("held_out/auroc", "held_out/auprc", "held_out/brier", "held_out/l1_logistic/auroc", "held_out/auroc_ci_low"):
        assert key in metrics
    # the fairness summary: a subgroup column's largest difference between published levels
    gaps = {k: v for r in runs for k, v in r.data.metrics.items() if k.startswith("held_out/gap/")}
    assert gaps and all(v >= 0 and k.split("/")[2] in ("age_band", "sex", "race", "ethnicity") for k, v in gaps.items())
    for r in runs:
        m = r.data.metrics
        assert 0.6 < m["held_out/auroc"] <= 1.0
        assert m["held_out/auroc_ci_low"] <= m["held_out/auroc"] <= m["held_out/auroc_ci_high"]
        assert 0 < m["held_out/auprc"] <= 1 and 0 < m["held_out/brier"] < 0.25
        tags = r.data.tags
        assert tags["forewarn.validation_design"] == "internal" and tags["forewarn.task"] == "t2d_2y"
        assert len(tags["forewarn.data_digest"]) == 16 and len(tags["forewarn.task_digest"]) == 16
        assert "AUROC" in tags["mlflow.note.content"]
        # The model's make-up is a param, the same in every run: T2D is common, so no offset;
        # the blend weight is the one training chose (out-of-fold train rows and tuning rows).
        params = r.data.params
        assert (params["offset"], params["blend"]) == ("none", "crossfit") and 0 <= float(params["blend_weight"]) <= 1
        # T2D's outcome rate is under 5% when people count by their time at risk, so its
        # weights are chosen by AUPRC (models.search.objective_name), guarded by AUROC
        assert params["blend_guard"] == "auroc"
        assert params["blend_rule"] == "one_se"
        # the search as it ran: two trials (the study asks for two), chosen on AUPRC (T2D under 5%, as above)
        assert (params["search_trials"], params["search_objective"], params["search_timeout_s"]) == ("2", "auprc", "600")
        # The rule of 11 for the trees' leaves, and how many leaves it kept of those grown.
        assert (params["leaf_min_cell"], params["leaf_move_splits"]) == ("11", "True")
        after, before = (int(v.replace(",", "")) for v in params["leaves_released"].split(" of "))
        assert 0 < after <= before
        # The model's size against its events: the features it uses, and the warning's tag.
        assert 0 < int(params["features_used"]) <= int(params["n_features"])
        assert tags["forewarn.sample_size_warning"] in ("true", "false")
    # The degraded data has another digest and a worse model.
    by_site = {}
    for r in sorted(runs, key=lambda r: r.info.start_time):
        by_site.setdefault(r.data.tags["forewarn.site"], []).append(r)
    for good, bad in by_site.values():
        assert good.data.tags["forewarn.data_digest"] != bad.data.tags["forewarn.data_digest"]
        assert bad.data.metrics["held_out/auroc"] < good.data.metrics["held_out/auroc"]
    # Two search trials per site run, as nested runs.
    trials = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == 2 * 4 and all("tuning/auprc" in t.data.metrics for t in trials)  # the objective, as above
    parents = {r.info.run_id: r for r in runs}
    for t in trials:  # a trial carries its run's site and task, not its design (a design's search finds no trial)
        parent = parents[t.data.tags["mlflow.parentRunId"]].data.tags
        assert (t.data.tags["forewarn.site"], t.data.tags["forewarn.task"]) == (parent["forewarn.site"], parent["forewarn.task"])
        assert "forewarn.validation_design" not in t.data.tags


def test_artifacts_present(flow_run, client):
    run_id = flow_run["first"][0].run_id
    listed = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "metrics.json", "figures", "shap", "data", "config"} <= listed
    figures = {a.path for a in client.list_artifacts(run_id, "figures")}

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    metrics = strict(Path(client.download_artifacts(run_id, "metrics.json")).read_text())
    # The decision curve is drawn only when some net benefit may be shown (at 3,000 people
    # every threshold's table may hold a cell of 1..10).
    drawn = any(r["net_benefit_model"] is not None for r in metrics["decision_curve"])
    expected = ["roc_pr", "calibration", "shap_bar", "shap_beeswarm"] + (["decision_curve"] if drawn else [])
    expected += [f"shap_dependence_{k}" for k in (1, 2, 3)] + [f"shap_waterfall_{k}" for k in (1, 2, 3)]
    expected += ["learning_curve"]  # the study asks for one
    assert figures == {f"figures/{n}.png" for n in expected}
    assert set(metrics["held_out"]) == {"xgboost", "l1_logistic", "age_sex", "xgboost_uncalibrated", "xgboost_trees"}
    # Calibration groups (deciles, merged where a boundary would leave a small band) cover
    # every held-out row, each with 0 or 11+ events and non-events.
    groups = metrics["calibration"]["xgboost"]
    assert 1 <= len(groups) <= 10 and sum(g["n"] for g in groups) == metrics["held_out"]["xgboost"]["n"]
    assert all(c == 0 or c >= 11 for g in groups for c in (g["events"], g["n"] - g["events"]))
    summary = strict(Path(client.download_artifacts(run_id, "data/pull_summary.json")).read_text())
    assert summary["site"] == flow_run["first"][0].site and summary["subjects"] >= 11
    quality = strict(Path(client.download_artifacts(run_id, "data/quality.json")).read_text())
    assert quality["top_codes"][0]["events"] >= 11
    assert {v["code"] for v in quality["values_outside_plausible_range"]} >= {"LOINC//4548-4", "LOINC//62238-1"}
    # The attrition as the report's flow shows it: no count of 1..10, never one hidden
    # exclusion step alone (candidates less labelled less the others would give it back).
    attrition = strict(Path(client.download_artifacts(run_id, "data/attrition.json")).read_text())
    assert attrition["positive"].keys() == {"times"}
    counts = [c for step in attrition.values() for c in step.values()]
    assert all(c is None or c == 0 or c >= 11 for c in counts)
    steps = [k for k in attrition if k not in ("candidates", "labelled", "positive")]
    for what in ("times", "subjects"):
        assert sum(attrition[k][what] is None for k in steps) != 1
    shown = [attrition[k]["times"] for k in steps if attrition[k]["times"] is not None]
    assert len(shown) < len(steps) or sum(shown) == attrition["candidates"]["times"] - attrition["labelled"]["times"]


def test_registry_aliases_keep_the_first_champion(flow_run, client):
    refused_on_auroc = []
    for first, second in zip(flow_run["first"], flow_run["second"], strict=True):
        assert first.model_name == f"forewarn-t2d_2y-{first.site}"
        assert (first.version, set(first.aliases)) == ("1", {"challenger", "champion"}), first.decision
        assert (second.version, set(second.aliases)) == ("2", {"challenger"})
        assert str(client.get_model_version_by_alias(first.model_name, "champion").version) == "1"
        assert str(client.get_model_version_by_alias(first.model_name, "challenger").version) == "2"
        assert "kept as challenger (champion stays v1)" in second.decision  # the gate refuses the degraded model
        # ... for its AUROC, or because the data drifted (on_drift: alert). Where the
        # champion itself fails on the degraded rows (at the community site its AUROC there
        # is about 0.5 since the "Maps to" parents), the challenger can be non-inferior on
        # AUROC and only the drift alert holds it back.
        auroc = "AUROC lower 95% bound" in second.decision and "< champion v1 AUROC" in second.decision
        assert auroc or "drift alert: the data drifted from the champion" in second.decision
        refused_on_auroc.append(auroc)
        # The AUROC rule's numbers, as the reasons quote them, agree with its verdict.
        import re

        low, sign, champion, bar = re.search(r"AUROC lower 95% bound ([\d.]+) (>=|<) champion v1 AUROC ([\d.]+) - margin "
                                             r"0.02 = ([\d.]+)", second.decision).groups()
        assert float(bar) == pytest.approx(float(champion) - 0.02, abs=1.5e-3)
        assert (float(low) >= float(bar)) == (sign == ">=")
        # The paired difference on the same rows is shown beside it, not deciding (test: marginal),
        # and it is the candidate's AUROC minus the champion's.
        diff, d_low, d_high = (float(x) for x in re.search(
            r"for information, not the rule in force \(paired test\): AUROC minus champion v1's on the same held-out rows ([-+][\d.]+) \(paired 95% "
            r"CI ([-+][\d.]+) to ([-+][\d.]+)\)", second.decision).groups())
        m = client.get_run(second.run_id).data.metrics
        assert diff == pytest.approx(m["promotion/auroc_difference"], abs=5e-4)
        assert m["held_out/auroc"] - m["promotion/auroc_difference"] == pytest.approx(float(champion), abs=5e-4)
        assert d_low <= diff <= d_high
    # Since session 16's released trees the champions fail on the degraded rows too (AUROC
    # about 0.6 and 0.5 there), so at this size the drift alert is what refuses them.


def test_champion_loads_by_alias_and_predicts_as_forewarn_does(flow_run, tmp_path):
    import mlflow
    import numpy as np
    import scipy.sparse as sp

    from forewarn.flows import tracking
    from forewarn.models.calibration import Calibrator
    from forewarn.models.train import TrainedModels, load_primary

    result = flow_run["first"][0]
    model = mlflow.pyfunc.load_model(f"models:/{result.model_name}@champion")
    # The second night re-featurized its data with the champion's own columns for the promotion rule.
    (folder,) = (flow_run["study"].sites[0].workdir / "stages" / "champion-features-t2d_2y").iterdir()
    X = sp.load_npz(folder / "X.npz").tocsr()
    p = model.predict(X[:20])
    assert p.shape == (20,) and ((p > 0) & (p < 1)).all()  # risks, not 0/1 labels
    # The same as Forewarn's own model (trees, and its offset and blend where it has them),
    # as the champion's inputs bring it back.
    site = flow_run["study"].sites[0].name
    tracking.champion_inputs("t2d_2y", site, tmp_path / "champion")
    champion = TrainedModels(tmp_path / "champion")
    raw = load_primary(champion).probability(X[:20])
    calibrator = Calibrator.from_json(json.loads(champion.calibration_path.read_text()))
    np.testing.assert_allclose(p, calibrator(raw), rtol=1e-5)  # the calibrated risk
    np.testing.assert_allclose(model.predict(X[:20], params={"calibrated": False}), raw, rtol=1e-5)
    # The registered model's signature: a float32 matrix of the champion's columns in, one risk per
    # row out, `calibrated` a parameter (default true); its input example is synthetic (every
    # feature absent), never a patient row.
    info = mlflow.models.get_model_info(f"models:/{result.model_name}@champion")
    (inputs,) = info.signature.inputs.inputs
    assert (inputs.type, inputs.shape) == (np.dtype("float32"), (-1, X.shape[1]))
    assert [(p.name, p.default) for p in info.signature.params.params] == [("calibrated", True)]
    assert info.signature.outputs.inputs[0].shape == (-1,)
    example = mlflow.models.Model.load(info.model_uri).load_input_example()
    assert example.shape == (2, X.shape[1]) and np.isnan(example).all()


def test_report_has_every_section_and_the_run_numbers(flow_run, client):
    result = flow_run["second"][0]  # the site's report.html is the latest run's; MLflow keeps each run's
    html = result.report_path.read_text()
    for section in ("summary", "data", "participants", "outcome", "predictors", "model", "performance", "calibration", "explanations", "limitations"):
        assert f'id="{section}"' in html
    auroc = f"{result.metrics['held_out/auroc']:.3f}"
    assert auroc in html
    assert html.count("data:image/png;base64,") == 12  # 11 and the learning curve the study asks for
    assert re.search(r"\((LOINC|SNOMED|CPT4|RxNorm) [0-9][0-9-]*\), ", html)  # readable names: "... (LOINC 4548-4), last value"
    assert result.decision in unescape(html)
    assert "Data quality" in html and "outside plausible range" in html
    # What the study states reaches the site's report and the network model's report at the site.
    network = (flow_run["work"] / "sites" / result.site / "work" / "reports" / "t2d_2y" / "network-report.html").read_text()
    for page in (html, network):
        assert "(as the study states it): E2E: adults at outpatient visits; an alert prompts an HbA1c.</p>" in page
        assert '<td class="l">Not needed: synthetic records.</td>' in page
        assert "to be completed by the site (study file: reporting.funding)" in page


def _source_identifiers(db: Path) -> set[str]:
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT person_source_value, patient_name FROM person").fetchall()
    con.close()
    return {str(v) for row in rows for v in row if v}


def _strings(path: Path):
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        for col in table.columns:
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                yield from (v for v in col.to_pylist() if v)
    elif path.suffix == ".db":
        con = sqlite3.connect(path)
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for row in con.execute(f'SELECT * FROM "{table}"'):
                yield from (v for v in row if isinstance(v, str))
        con.close()
    elif path.suffix in (".json", ".html", ".yaml", ".txt", ".MLmodel", "") or path.name == "MLmodel":
        yield path.read_text(errors="replace")


def test_no_identifier_reaches_any_output(flow_run, demo_network):
    identifiers = set().union(*(_source_identifiers(p) for p in demo_network.values()))
    mrns = {i for i in identifiers if i.startswith("MRN")}
    names = identifiers - mrns
    assert len(mrns) > 1000 and len(names) > 100
    checked = 0
    roots = [flow_run["work"] / "mlruns", *(s.workdir for s in flow_run["study"].sites)]
    for root in roots:
        for path in root.rglob("*"):
            if not path.is_file():
                continue
            for text in _strings(path):
                tokens = re.findall(r"[A-Za-z0-9]+", text)
                assert not mrns & set(tokens), path
                assert not names & {f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)}, path
                checked += 1
    assert checked > 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_forewarn_ui_serves_both_sites_runs(flow_run):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "forewarn.flows.cli", "ui", "--port", str(port)],
        cwd=flow_run["work"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.5)
        req = urllib.request.Request(
            f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=forewarn/t2d_2y"
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            exp_id = json.load(r)["experiment"]["experiment_id"]
        body = json.dumps({"experiment_ids": [exp_id], "max_results": 100,
                           "filter": "tags.`forewarn.validation_design` = 'internal'"}).encode()
        req = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            runs = json.load(r)["runs"]
        sites = sorted(t["value"] for run in runs for t in run["data"]["tags"] if t["key"] == "forewarn.site")
        assert sites == ["academic", "academic", "community", "community"]
        with urllib.request.urlopen(f"{base}/", timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_external_validation_runs_bring_back_aggregates_only(flow_run, client):
    exp = client.get_experiment_by_name("forewarn/t2d_2y")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`forewarn.validation_design` = 'external'")
    pairs = sorted((r.data.tags["forewarn.train_site"], r.data.tags["forewarn.site"]) for r in runs)
    assert pairs == [("academic", "community")] * 2 + [("community", "academic")] * 2
    for r in runs:
        m = r.data.metrics
        assert 0.5 < m["held_out/auroc"] <= 1 and m["held_out/auroc_ci_low"] <= m["held_out/auroc"]
        assert "held_out/recalibrated/brier" in m
        assert not client.list_artifacts(r.info.run_id, "model_inputs")  # no model, no rows: aggregates only
    internal = client.search_runs([exp.experiment_id], filter_string="tags.`forewarn.validation_design` = 'internal'")[0]
    external = json.loads(Path(client.download_artifacts(internal.info.run_id, "validation/external.json")).read_text())
    assert [v["design"] for v in external["validations"]] == ["network", "external", "temporal"]
    # The shipped model's "site" level there, scored at the home site's operating point, is
    # the report's Site subgroup row for that site.
    shipped = external["validations"][1]["site_subgroup"]
    site = internal.data.tags["forewarn.site"]
    assert shipped["group"] == "site" and shipped["level"] == external["validations"][1]["eval_site"] != site
    assert "sensitivity" in shipped and (shipped["suppressed"] or shipped["auroc"] is not None)
    report = Path(client.download_artifacts(internal.info.run_id, "report.html")).read_text()
    assert f"{shipped['level']} (model shipped there)" in report and f"{site} (this run&#39;s held-out split)" in report
    temporal = client.search_runs([exp.experiment_id], filter_string="tags.`forewarn.validation_design` = 'temporal'")
    assert len(temporal) == 4 and all(0.5 < r.data.metrics["held_out/auroc"] <= 1 for r in temporal)
    assert {r.data.tags["forewarn.temporal_from"] for r in temporal} == {"2021-07-01"}
    # Its row says what it was trained on and what the cutoff left out, as its record holds it.
    row = external["validations"][2]
    record = json.loads(Path(client.download_artifacts(row["run_id"], "validation/temporal.json")).read_text())
    dev = record["development"]
    assert all(v is None or v >= 11 for v in (dev["rows"], dev["events"], record["crosses_cutoff"]))
    assert row["note"] == (
        f"a refit of this site's model (its settings, no search) on the times whose 730-day horizon ends by 2021-07-01 "
        f"({dev['rows']:,} train and tuning rows, {dev['events']:,} with the outcome; "
        f"{'<11' if record['crosses_cutoff'] is None else format(record['crosses_cutoff'], ',')} times left out whose "
        "horizon crosses the cutoff), tested on the times from then on")
    assert {d.dataset.name.rsplit("/", 1)[1] for d in internal.inputs.dataset_inputs} == {"train", "tuning", "held_out"}
    # An internal run's datasets carry its feature matrix's digest, which follows the labels and splits too.
    features = {json.loads(m.read_text())["digest"][:16]
                for m in flow_run["work"].glob(f"**/{site}/**/stages/features-t2d_2y/*/.stage.json")}
    assert features and {d.dataset.digest.rsplit("-", 1)[0] for d in internal.inputs.dataset_inputs} <= features
    promotion = json.loads(Path(client.download_artifacts(internal.info.run_id, "validation/promotion.json")).read_text())
    assert promotion["reasons"] and "calibration slope" in " ".join(promotion["reasons"])


def test_every_validation_design_has_the_internal_runs_names_params_and_tags(flow_run, client):
    """Internal, external and temporal runs line up in the compare view: the evaluation
    set's metrics under the same names (the design is the tag, not the name), the same
    params, the same tags, and their data as mlflow.data dataset inputs."""
    exp = client.get_experiment_by_name("forewarn/t2d_2y")
    runs = {design: client.search_runs([exp.experiment_id], filter_string=f"tags.`forewarn.validation_design` = '{design}'")
            for design in ("internal", "external", "temporal", "network")}
    assert [len(runs[d]) for d in ("internal", "external", "temporal", "network")] == [4, 4, 4, 4]
    (internal_names,) = {frozenset(k for k in r.data.metrics if not k.startswith(VARYING)) for r in runs["internal"]}
    core = {f"held_out/{k}" for k in ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "auprc_ci_low", "auprc_ci_high",
                                      "brier", "calibration_slope", "calibration_in_the_large")}
    core |= {f"held_out/xgboost/{k}" for k in ("auroc", "auprc", "brier", "n", "events")}
    assert core <= internal_names
    for design in ("external", "temporal", "network"):
        for r in runs[design]:
            names = {k for k in r.data.metrics if not k.startswith("held_out/recalibrated/")}
            assert core <= names, (design, core - names)
            assert names <= internal_names, (design, names - internal_names)  # no name of its own
            assert not any(k.startswith(("external", "temporal", "network")) for k in r.data.metrics)
    # Those of the internal run's primary model exactly, where no value is suppressed.
    primary = {k for k in internal_names if k.startswith("held_out/") and (k.count("/") == 1 or k.startswith("held_out/xgboost/"))}
    assert {frozenset(r.data.metrics) for r in runs["temporal"]} == {frozenset(primary)}
    for r in runs["external"] + runs["network"]:
        recalibrated = {k.replace("recalibrated/", "") for k in r.data.metrics if k.startswith("held_out/recalibrated/")}
        assert {"held_out/auroc", "held_out/auprc", "held_out/brier", "held_out/calibration_slope"} <= recalibrated
        assert set(r.data.metrics) - {f"held_out/recalibrated/{k.split('/', 1)[1]}" for k in recalibrated} == primary
    # The same tags; the data digest is that of the site whose rows were evaluated, as in
    # the internal run on that site's data the same night.
    internal_digests = {(r.data.tags["forewarn.site"], r.data.tags["forewarn.data_digest"]) for r in runs["internal"]}
    internal_params = {frozenset(r.data.params) for r in runs["internal"]}
    assert len(internal_params) == 1
    for design in ("external", "temporal", "network"):
        for r in runs[design]:
            tags = r.data.tags
            for key in ("data_digest", "task_digest", "code_version", "site", "validation_design", "task", "study"):
                assert tags.get(f"forewarn.{key}"), (design, key)
            assert tags["forewarn.validation_design"] == design and tags["forewarn.complete"] == "true"
            assert len(tags["forewarn.data_digest"]) == 16 and len(tags["forewarn.task_digest"]) == 16
            assert (tags["forewarn.site"], tags["forewarn.data_digest"]) in internal_digests
            assert set(r.data.params) == set(next(iter(internal_params)))
            assert r.data.params["site"] == tags["forewarn.site"] and r.data.params["task"] == "t2d_2y"
    for r in runs["temporal"]:
        assert r.data.tags["forewarn.code_version"] == runs["internal"][0].data.tags["forewarn.code_version"]
        datasets = {(d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"]) for d in r.inputs.dataset_inputs}
        site = r.data.tags["forewarn.site"]
        assert datasets == {(f"{site}/t2d_2y/temporal/train", "training"), (f"{site}/t2d_2y/temporal/tuning", "validation"),
                            (f"{site}/t2d_2y/temporal/held_out", "test")}
    for r in runs["external"]:
        datasets = {d.dataset.name: d for d in r.inputs.dataset_inputs}
        prefix = f"{r.data.tags['forewarn.site']}/t2d_2y/{r.data.tags['forewarn.train_site']}-columns"
        assert set(datasets) == {f"{prefix}/held_out", f"{prefix}/tuning"}  # tuning: where it was recalibrated
        assert all(d.dataset.digest and d.dataset.source for d in datasets.values())
    for r in runs["network"]:
        assert {d.dataset.name for d in r.inputs.dataset_inputs} == {
            f"{r.data.tags['forewarn.site']}/t2d_2y/network-columns/{split}" for split in ("held_out", "tuning")}


def test_network_design_trains_one_model_across_sites_without_moving_rows(flow_run, client):
    """One network model a night, trained across both sites; each site evaluates it on its
    own held-out rows and logs one run; its report shows the row; no model leaves in MLflow."""
    exp = client.get_experiment_by_name("forewarn/t2d_2y")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`forewarn.validation_design` = 'network'")
    assert sorted(r.data.tags["forewarn.site"] for r in runs) == ["academic", "academic", "community", "community"]
    assert {r.data.tags["forewarn.train_site"] for r in runs} == {"academic + community"}
    for r in runs:
        assert 0.5 < r.data.metrics["held_out/auroc"] <= 1
        assert not client.list_artifacts(r.info.run_id, "model_inputs")
        record = json.loads(Path(client.download_artifacts(r.info.run_id, "validation/network.json")).read_text())
        assert record["network"]["sites"] == ["academic", "community"] and record["network"]["trees"] >= 1
        assert record["as_shipped"]["auroc"] == pytest.approx(r.data.metrics["held_out/auroc"])
    latest = {r.data.tags["forewarn.site"]: r for r in sorted(runs, key=lambda r: r.info.start_time)}
    for site, r in latest.items():
        # The network model's own report at the site: subgroups, calibration, SHAP, with its numbers.
        listed = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"report.html", "metrics.json", "figures", "shap"} <= listed
        html = unescape((flow_run["work"] / "sites" / site / "work" / "reports" / "t2d_2y" / "network-report.html").read_text())
        assert "t2d_2y: the network's model at site" in html and r.info.run_id in html
        assert "is the network's model (one model trained across the sites, registered as the network's own model" in html
        assert r.data.tags["forewarn.network_version"] == "2" and "forewarn-t2d_2y-network v2 kept as challenger" in html
        assert "trained across the sites academic, community without moving rows" in html
        # each site answered the training from a process of its own (validation.site_processes, the default)
        # (with up to five times per person both sites can tune: each sends tuning sums)
        sent = (r"{} sent [\d,]+ models with its trees added, [\d,]+ tuning log-losses, [\d,]+ Platt gradient and "
                r"Hessian sums, [\d,]+ Brier sums, [\d,]+ train label counts \([\d,]+ kB in all\)")
        assert re.search(r"each site answered from a process of its own, which held its rows and refused any other "
                         r"call: " + sent.format("academic") + "; " + sent.format("community"), html), html
        assert f"{r.data.metrics['held_out/auroc']:.3f}" in html and 'id="subgroups"' in html
        assert html.count("data:image/png;base64,") == 11
        # The same model at the other site: its validation row and its "Site" subgroup level.
        other = next(s for s in latest if s != site)
        assert f"{other} (the network's model there; alerts at risk ≥ " in html and f"{site} (this run's held-out split)" in html
        assert f"the same model on {other}'s held-out split" in html
        assert f"{latest[other].data.metrics['held_out/auroc']:.3f}" in html
        # ... named by the digest of the rows its own run there was logged with
        digests = [d.dataset.digest for d in client.get_run(latest[other].info.run_id).inputs.dataset_inputs]
        held = next(d for d in digests if d.endswith("-held_out"))
        assert f"its MLflow run there: site {other}, validation_design network, dataset digest {held}" in html
        # This site's row after recalibration here, and the AUROC between the sites.
        recal = r.data.metrics.get("held_out/recalibrated/auroc")
        if recal is not None:
            assert f"AUROC {recal:.3f}, Brier {r.data.metrics['held_out/recalibrated/brier']:.4f}" in html
        assert "Between sites." in html and "across the 2 sites; pooled (random effects" in html
    for result in flow_run["second"]:
        html = unescape(result.report_path.read_text())
        assert "network (one model trained across the sites without moving rows)" in html
        assert f"{latest[result.site].data.metrics['held_out/auroc']:.3f}" in html
        assert "and the network's model: one model trained across the sites" in html


def test_network_model_is_registered_and_promoted_only_if_non_inferior_at_every_site(flow_run, client, tmp_path):
    """The network's model has a registered model of its own, registered from a run of
    its own; the first night's becomes champion, the degraded night's stays challenger
    (refused at a site, or held back by a site's drift alert); the run keeps what the
    next night needs to re-score the champion and check drift at each site."""
    import mlflow
    import numpy as np
    import scipy.sparse as sp

    from forewarn.evaluation import metrics

    name = "forewarn-t2d_2y-network"
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    assert [str(v.version) for v in versions] == ["1", "2"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    exp = client.get_experiment_by_name("forewarn/t2d_2y")
    runs = sorted(client.search_runs([exp.experiment_id], filter_string="tags.`forewarn.role` = 'registration'"),
                  key=lambda r: r.info.start_time)
    assert [r.info.run_id for r in runs] == [v.run_id for v in versions]
    records = [json.loads(Path(client.download_artifacts(r.info.run_id, "validation/promotion.json")).read_text()) for r in runs]
    first, second = records
    assert first["promoted"] is True and first["champion_version"] is None and first["version"] == "1"
    assert first["reasons"][0] == "academic: there is no champion yet" and "community: there is no champion yet" in first["reasons"]
    assert first["decision"].startswith(f"{name} v1 promoted to the network's champion: academic: there is no champion yet")
    assert second["promoted"] is False and second["champion_version"] == "1" and set(second["sites"]) == {"academic", "community"}
    assert second["decision"].startswith(f"{name} v2 kept as challenger (champion stays v1): ")
    # Each site re-scored the champion on its own degraded held-out rows and compared its data
    # with its own part of the champion's profile; the labs are gone, so the sites alert.
    drift = json.loads(Path(client.download_artifacts(runs[1].info.run_id, "validation/drift.json")).read_text())
    assert drift["decision"]["action"] == "alert" and drift["champion_version"] == "1"
    for site in ("academic", "community"):
        assert drift["sites"][site]["compare"]["max_psi"] > 0.25
        assert any(r.startswith(f"{site}: feature ") and "drifted" in r for r in drift["decision"]["reasons"])
        assert f"{site}: AUROC lower 95% bound" in " ".join(second["reasons"])
        assert f"{site}: for information, not the rule in force (paired test): AUROC minus champion v1's on the same held-out rows" in \
            " ".join(second["reasons"])
        assert second["paired"][site]["ci_low"] <= second["paired"][site]["difference"] <= second["paired"][site]["ci_high"]
    assert second["reasons"][0].startswith("drift alert: the data drifted from the network champion's")
    assert first.get("paired") is None and set(second["paired"]) == {"academic", "community"}
    for r, record, promoted in zip(runs, records, ("true", "false"), strict=True):
        tags = r.data.tags
        assert (tags["forewarn.site"], tags["forewarn.train_site"], tags["forewarn.promoted"]) == ("network", "academic + community", promoted)
        assert "forewarn.validation_design" not in tags and tags["forewarn.complete"] == "true"
        # The model's AUROC between the sites, from the per-site summary the run holds.
        sites = json.loads(Path(client.download_artifacts(r.info.run_id, "validation/sites.json")).read_text())
        between = metrics.between_sites([{"site": n, **v} for n, v in sites.items()])
        # ... and each site's paired difference against the champion, once there is one.
        paired = {f"promotion/{n}/auroc_difference{suffix}": pytest.approx(d[k])
                  for n, d in (record.get("paired") or {}).items()
                  for k, suffix in (("difference", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high"))}
        assert r.data.metrics == {"promotion/promoted": float(promoted == "true")} | {
            f"between_sites/{k}": pytest.approx(between[k]) for k in metrics.BETWEEN_SITES_METRICS if between[k] is not None
        } | paired
        logged = json.loads(Path(client.download_artifacts(r.info.run_id, "validation/between_sites.json")).read_text())
        assert logged.pop("sites") == between.pop("sites") == ["academic", "community"]
        assert logged == pytest.approx(between)
        inputs = {a.path.rsplit("/", 1)[1] for a in client.list_artifacts(r.info.run_id, "model_inputs")}
        assert inputs == {"xgboost.json", "calibration.json", "columns.parquet", "profile-academic.json", "profile-community.json"}
    # The champion serves like any registered model: calibrated risks on rows in its columns.
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    (folder,) = (flow_run["study"].sites[0].workdir / "stages" / "network-champion-features-t2d_2y").iterdir()
    p = model.predict(sp.load_npz(folder / "X.npz").tocsr()[:20])
    assert p.shape == (20,) and ((p > 0) & (p < 1)).all() and len(np.unique(p)) > 1
    # The site runs name the version they evaluated; the reports show the decision.
    html = unescape((flow_run["work"] / "sites" / "academic" / "work" / "reports" / "t2d_2y" / "network-report.html").read_text())
    assert "Not promoted: kept as challenger (v2)" in html and "Current champion before this run: v1" in html
    assert "academic: feature " in html  # the network's drift reasons, by site


def test_drift_is_checked_against_the_champion_before_retraining(flow_run, client):
    for first, second in zip(flow_run["first"], flow_run["second"], strict=True):
        assert first.drift["compare"] is None and first.drift["decision"]["reasons"] == ["no champion"]
        decision = second.drift["decision"]
        # The degraded night lost most labs: the champion's top features moved.
        assert decision["drifted"] is True and decision["action"] == "alert"
        assert second.drift["compare"]["max_psi"] > 0.25 and second.drift["compare"]["drifted_features"]
        assert "drift alert" in second.decision
        run = client.get_run(second.run_id)
        assert run.data.tags["forewarn.drift_alert"] == "true"
        assert run.data.metrics["drift/max_psi"] == pytest.approx(second.drift["compare"]["max_psi"])


def test_the_second_night_compares_its_pull_with_the_first(flow_run):
    # The degraded copies kept a tenth of each site's measurements: the report flags it.
    for first, second in zip(flow_run["first"], flow_run["second"], strict=True):
        assert "No earlier pull of this site with other data to compare with." in unescape(first.report_path.read_text())
        page = unescape(second.report_path.read_text())
        assert re.search(r'id="pull-alert" role="note"><b>The data changed since the previous pull \(\d{4}-\d\d-\d\d\)</b>: '
                         r"measurement kept [\d,]+ rows \(about -90%\)", page), second.site
        history = json.loads((flow_run["work"] / "sites" / second.site / "work" / "pulls.json").read_text())
        assert len(history) == 2 and history[0]["tables"]["measurement"]["kept"] > history[1]["tables"]["measurement"]["kept"]


def test_the_second_night_logs_and_shows_the_champion_beside_the_candidate(flow_run, client):
    for second in flow_run["second"]:
        m = client.get_run(second.run_id).data.metrics
        # The champion's AUROC on the same rows is the candidate's less the paired difference.
        assert m["champion/held_out/auroc"] == pytest.approx(m["held_out/auroc"] - m["promotion/auroc_difference"], abs=5e-4)
        assert m["champion/held_out/auroc_ci_low"] <= m["champion/held_out/auroc"] <= m["champion/held_out/auroc_ci_high"]
        assert 0 < m["champion/held_out/calibration_slope"]
        page = unescape(second.report_path.read_text())
        assert re.search(r'<td class="l">champion v1</td><td>0\.\d{3} \(0\.\d{3}–[01]\.\d{3}\)</td>', page), second.site
    assert not any(k.startswith("champion/") for r in flow_run["first"] for k in client.get_run(r.run_id).data.metrics)


def test_both_nights_enter_every_people_ledger(flow_run):
    # The degraded night changed most people's records: the site's ledger holds both
    # nights. It changed no one's labels: the task's label stage wrote the same files, the
    # same entry; the temporal design's stage differs (its models), so it is entered again,
    # 0 people away from the first.
    for site in ("academic", "community"):
        folder = flow_run["work"] / "sites" / site / "work"
        assert sorted(json.loads((folder / "published_people.json").read_text())) == ["site", "task:t2d_2y", "task:t2d_2y-temporal"]
        counts = {ledger: len(json.loads((folder / "published_people" / ledger / "index.json").read_text()))
                  for ledger in ("", "t2d_2y", "t2d_2y-temporal")}
        assert counts == {"": 2, "t2d_2y": 1, "t2d_2y-temporal": 2}, (site, counts)


def test_every_external_and_temporal_run_holds_its_own_report(flow_run, client, tmp_path):
    """One self-contained report per run: each external and temporal validation run holds
    its own ``report.html`` (``evaluation.report.validation_context``) with its design, its
    run and the numbers its metrics hold, and the validating site's participants."""
    from test_report import CHROMIUM, Page, _chromium, _console_problems

    exp = client.get_experiment_by_name("forewarn/t2d_2y")
    seen = []
    for design in ("external", "temporal"):
        for r in client.search_runs([exp.experiment_id], filter_string=f"tags.`forewarn.validation_design` = '{design}'"):
            path = Path(client.download_artifacts(r.info.run_id, "report.html", str(tmp_path / r.info.run_id)))
            page = Page(path.read_text())
            assert not page.errors and not page.hrefs and all(src.startswith("data:") for src in page.srcs)
            plain = unescape(page.text)
            site, m = r.data.tags["forewarn.site"], r.data.metrics
            trained_at = r.data.tags.get("forewarn.train_site", site)
            assert f"t2d_2y: {design} validation of forewarn-t2d_2y-{trained_at} at site “{site}”" in plain, plain[:300]
            assert f"MLflow run {r.info.run_id}" in plain and f"data digest {r.data.tags['forewarn.data_digest']}" in plain
            if "held_out/auroc" in m:
                assert (f"AUROC {m['held_out/auroc']:.3f} ({m['held_out/auroc_ci_low']:.3f}–"
                        f"{m['held_out/auroc_ci_high']:.3f})") in plain
            for heading in ("1. The model validated", "2. Participants at this site", "4. Subgroups", "5. Limitations"):
                assert heading in plain
            if design == "temporal":
                assert "3. Performance on the times from 2021-07-01 on" in plain
                assert "Trained on the times before 2021-07-01, tested on those from then on" in plain
                assert "refitted on the times before 2021-07-01" in plain and "Not computed in the temporal design" in plain
            else:
                assert "3. Performance on this site's held-out split" in plain and "After recalibration here" in plain
                assert f"the t2d_2y model {trained_at} trained tonight in study “e2e”" in plain
                assert "age band" in plain.lower()
            seen.append((design, path))
    assert sorted(d for d, _ in seen) == ["external"] * 4 + ["temporal"] * 4
    if not CHROMIUM.is_file():
        if os.environ.get("FOREWARN_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"no Chromium at {CHROMIUM}")
        pytest.skip(f"no Chromium at {CHROMIUM} (CI installs it)")
    for design in ("external", "temporal"):
        path = next(p for d, p in seen if d == design)
        dump = _chromium(["--dump-dom", path.resolve().as_uri()], tmp_path / f"profile-{design}")
        assert dump.returncode == 0 and not _console_problems(dump.stderr), dump.stderr[-2000:]
        assert "5. Limitations" in dump.stdout


def test_another_site_s_champion_scores_a_worklist_with_the_calibrator_its_validation_fitted_here(flow_run, tmp_path):
    """Recalibration of a trained model on another site's data, put to use: academic's
    champion scores community's worklist (``worklist.models: [other_sites]``) with the
    calibrator its external validation at community fitted on community's tuning split
    (``worklist.recalibrate``, the default); with ``recalibrate: false``, as calibrated at
    academic."""
    import logging

    import mlflow
    import pandas as pd

    from forewarn.evaluation.validation import local_calibrator
    from forewarn.features.labels import load_task
    from forewarn.flows.cache import StageCache
    from forewarn.flows.score import score
    from forewarn.flows.study import WorklistSettings
    from forewarn.flows.worklist import worklist_model, worklists

    spec, community = load_task("t2d_2y"), flow_run["study"].sites[1]
    assert community.name == "community"
    study = flow_run["study"].model_copy(update={"worklist": WorklistSettings(enabled=True, models=["other_sites"])})
    choice = worklist_model(study, spec, "community")
    assert choice.model.label == "forewarn-t2d_2y-academic v1" and choice.whose == "other_sites"
    rec = choice.recalibration
    # a calibrator refitted on community's tuning split, or academic's own kept (no refit beat it there)
    assert rec is not None and rec["method"] in ("sigmoid", "isotonic", "shipped"), rec
    kept = rec["method"] == "shipped"
    run = mlflow.MlflowClient().get_run(rec["run_id"])  # the external validation of that very version, here
    assert {k: run.data.tags[f"forewarn.{k}"] for k in ("validation_design", "site", "train_site")} == {
        "validation_design": "external", "site": "community", "train_site": "academic"}
    cache = StageCache(community.workdir / "stages", site="community")
    # tonight's pull (the degraded night's), the latest of the cached ones
    key = max((p for p in (cache.root / "pull").iterdir() if ".partial-" not in p.name), key=lambda p: p.stat().st_mtime).name
    pull = cache.run("pull", key, lambda out: pytest.fail("the pull is cached"))
    events = pull.result.events_dir
    expected = {}
    for how, calibrator in (("here", local_calibrator(rec)), ("academic", None)):
        score(choice.model.ref, events, None, tmp_path / f"{how}.parquet", eligible=True, by_risk=True,
              codes_path=pull.result.codes_path, own_threshold=False, calibrator=calibrator)
        expected[how] = pd.read_parquet(tmp_path / f"{how}.parquet")["predicted_boolean_probability"]
    assert expected["here"].equals(expected["academic"]) == kept
    for recalibrate, how in ((True, "here"), (False, "academic")):
        site = community.model_copy(update={"workdir": tmp_path / f"site-{how}"})
        other = study.model_copy(update={"sites": [flow_run["study"].sites[0], site], "worklist": study.worklist.model_copy(
            update={"recalibrate": recalibrate})})
        notes = worklists(other, [spec], {"community": pull}, {"community": StageCache(tmp_path / f"stages-{how}")},
                          {"community": []}, logging.getLogger("test"))
        note, failed = notes[("community", "t2d_2y")]
        assert not failed
        assert (("its risks as calibrated at academic (its validation here kept them" if kept else
                 f"its risks recalibrated here ({rec['method']}, on this site's tuning split)") if recalibrate
                else "its risks as calibrated at academic; no alerts") in note, note
        folder = site.workdir / "worklists" / study.name
        worklist = pd.read_parquet(folder / "t2d_2y.parquet")
        summary = json.loads((folder / "t2d_2y.json").read_text())
        pd.testing.assert_series_equal(worklist["predicted_boolean_probability"], expected[how])
        assert summary["recalibrated_here"] == ({"method": rec["method"], "run_id": rec["run_id"]} if recalibrate else None)
    # The same at the command line: `forewarn score --recalibrate-here` finds the calibrator by the events' site.
    from typer.testing import CliRunner

    from forewarn.flows.cli import app

    uri = mlflow.get_tracking_uri()
    result = CliRunner().invoke(app, ["score", "forewarn-t2d_2y-academic", str(events), "--eligible", "--by-risk",
                                      "--recalibrate-here", "--out", str(tmp_path / "cli.parquet"), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert ((f"risks from the model's own calibrator: its external validation here (MLflow run {rec['run_id']}) found "
             "no calibrator fitted on this site's tuning split that beat it") if kept else
            (f"risks from the {rec['method']} calibrator fitted on this site's tuning split by the model's external "
             f"validation here (MLflow run {rec['run_id']}), not its own")) in result.output
    assert "its threshold was set for academic's people" in result.output
    pd.testing.assert_series_equal(pd.read_parquet(tmp_path / "cli.parquet")["predicted_boolean_probability"],
                                   expected["here"])
    academic = StageCache(flow_run["study"].sites[0].workdir / "stages", site="academic")
    own = max((p for p in (academic.root / "pull").iterdir() if ".partial-" not in p.name), key=lambda p: p.stat().st_mtime)
    own_events = academic.run("pull", own.name, lambda out: pytest.fail("the pull is cached")).result.events_dir
    result = CliRunner().invoke(app, ["score", "forewarn-t2d_2y-academic", str(own_events), "--eligible",
                                      "--recalibrate-here", "--out", str(tmp_path / "own.parquet"), "--tracking-uri", uri])
    assert result.exit_code != 0
    assert "forewarn-t2d_2y-academic v1 was trained at academic, whose events these are: it is calibrated here already" \
        in " ".join(result.output.split())
