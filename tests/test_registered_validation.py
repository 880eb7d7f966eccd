"""A registered model from outside a study, validated at the study's sites
(``validation.registered``): the external validation of PLP's ``externalValidateDbPlp``,
for a partner that receives the model through the registry rather than training with it.

Under a real Prefect engine and one real MLflow store: a study ("home": the academic and
community sites, internal and external designs) trains and registers its T2D models;
another ("partner": a site "clinic" with the community site's records) names the academic
model and validates it beside a model of its own; a validation-only study ("checker": a
site "community" with those records) trains nothing and validates it, which must give
the home study's own external validation of that model at its community site exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import flow_workdir, store_client

pytestmark = pytest.mark.slow

MODEL = "forewarn-t2d_2y-academic"


def _study(name: str, site: str, db: Path, base: Path, features: dict | None = None, others: dict | None = None,
           workdir: Path | None = None, **validation):
    from forewarn.flows.study import parse_study

    sites = [{"name": n, "source": {"location": str(p)}} for n, p in {site: db, **(others or {})}.items()]
    if workdir is not None:
        sites[0]["workdir"] = str(workdir)
    return parse_study({
        "name": name, "demo": True, "tasks": ["t2d_2y"], "sites": sites,
        "features": features or {},
        "evaluation": {"bootstrap": 50, "shap_rows": 200},
        "models": {"n_jobs": 2, "search": {"trials": 0}, "blend": "tuned"},  # neither is under test here (time)
        "promotion": {"slope_low": 0.6},  # as test_flow_e2e: this small network's first academic model has slope 0.69
        "validation": {"designs": ["internal"], **validation} if validation.get("own_models", True) else validation,
    }, base_dir=base)


@pytest.fixture(scope="module")
def partner_run(tmp_path_factory, demo_network, prefect_server):
    work = tmp_path_factory.mktemp("work")
    with flow_workdir(work, tmp_path_factory.mktemp("prefect-home")):
        from forewarn.flows.nightly import nightly

        home = _study("home", "academic", demo_network["academic"], work / "home",
                      others={"community": demo_network["community"]}, designs=["internal", "external"])
        # the partner's own features have no 365-day window; the registered model's columns do
        partner = _study("partner", "clinic", demo_network["community"], work / "partner",
                         features={"windows": ["30d", "full"]},
                         registered=[MODEL, f"{MODEL}/9", "forewarn-ckd3_2y-academic@champion", f"{MODEL}/1"])
        # a validation-only study: no model of its own, the registered one validated. Its site has the
        # community site's name and records, hence its pseudonyms and split: the home study's own
        # external validation of the model there is the same validation.
        # It is the home study's community site, so it keeps that site's work folder (its people ledger: a
        # new folder for a site that has published would be held, since its nights could not be compared).
        checker = _study("checker", "community", demo_network["community"], work / "checker", own_models=False,
                         registered=[MODEL], workdir=work / "home" / "sites" / "community" / "work")
        home_results = nightly(home)
        partner_results = nightly(partner)
        checker_results = nightly(checker)
        yield {"work": work, "home": home_results, "partner": partner_results, "study": partner,
               "checker": checker_results, "checker_study": checker}


@pytest.fixture(scope="module")
def client(partner_run):
    return store_client(partner_run["work"])


class Collect:
    """A flow logger that keeps its warnings and errors."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.errors: list[str] = []

    def warning(self, message, *args) -> None:
        self.warnings.append(message % args)

    def error(self, message, *args) -> None:
        self.errors.append(message % args)


def _validation_runs(client):
    experiment = client.get_experiment_by_name("forewarn/t2d_2y")
    return client.search_runs([experiment.experiment_id], f"tags.`forewarn.validated_model` = '{MODEL}' AND "
                                                          "tags.`forewarn.study` = 'partner'")


def test_the_partner_logs_one_external_run_of_the_registered_model_with_its_provenance(partner_run, client):
    home = next(r for r in partner_run["home"] if r.site == "academic")
    assert (home.site, home.status, home.version, "champion" in home.aliases) == ("academic", "published", "1", True)
    [run] = _validation_runs(client)
    tags = run.data.tags
    assert {k: tags[f"forewarn.{k}"] for k in ("site", "train_site", "validation_design", "validated_version",
                                               "validated_study", "study", "task")} == {
        "site": "clinic", "train_site": "academic", "validation_design": "external", "validated_version": "1",
        "validated_study": "home", "study": "partner", "task": "t2d_2y"}
    # the model's make-up is its registration run's params; the site and features are the partner's
    registration = client.get_run(client.get_model_version(MODEL, "1").run_id).data.params
    assert run.data.params["xgb_max_depth"] == registration["xgb_max_depth"]
    assert run.data.params["l1_C"] == registration["l1_C"] and run.data.params["site"] == "clinic"
    assert run.data.params["n_features"] == registration["n_features"]  # featurized in the model's own columns ...
    assert run.data.params["windows"] == registration["windows"] == "30d,365d,full"  # ... as its own study computed them
    for name in ("held_out/auroc", "held_out/auprc", "held_out/brier", "held_out/calibration_slope"):
        assert name in run.data.metrics  # the names every run carries


def test_the_logged_auroc_is_the_registered_model_served_on_the_partners_held_out_rows(partner_run, client, tmp_path):
    """Independent of the flow's scoring: the model as MLflow serves it (pyfunc, by
    version), on the matrix the partner featurized in its columns."""
    import mlflow
    from sklearn.metrics import roc_auc_score

    from forewarn.features.featurize import FeatureMatrix
    from forewarn.records import schema

    [run] = _validation_runs(client)
    stages = partner_run["study"].sites[0].workdir / "stages"
    [folder] = [p for p in (stages / f"external-t2d_2y-registered-{MODEL}-v1").iterdir() if (p / "record.json").is_file()]
    X, rows, _ = FeatureMatrix(folder / "features").load()
    held = (rows[schema.SPLIT] == schema.HELD_OUT).to_numpy()
    served = mlflow.pyfunc.load_model(f"models:/{MODEL}/1").predict(X[held])
    y = rows.loc[held, schema.BOOLEAN_VALUE].to_numpy(bool)
    assert y.sum() >= 11 and (~y).sum() >= 11  # published, not withheld
    assert run.data.metrics["held_out/auroc"] == pytest.approx(roc_auc_score(y, np.asarray(served)), abs=1e-9)
    record = json.loads((folder / "record.json").read_text())
    assert record["as_shipped"]["auroc"] == run.data.metrics["held_out/auroc"]
    # its calibration groups, as shipped and recalibrated, hold 0 or 11+ events and non-events each, and no
    # group boundary sits within 1..10 of either beside the alert threshold's cut-off, which came first
    from forewarn.records.privacy import Cutoffs

    p = np.asarray(served, float)
    ledger = Cutoffs(y, p)
    threshold = ledger.flagged(record["subgroup_threshold"]["threshold"])
    if not ledger.add(threshold):  # its 2x2 table has a cell of 1..10: the subgroups publish nothing at it
        threshold = 0
    for key in ("as_shipped", "recalibrated"):
        groups = record["calibration"][key]
        assert len(groups) >= 2 and sum(g["n"] for g in groups) == y.size and sum(g["events"] for g in groups) == y.sum()
        for g in groups:
            assert all(c == 0 or c >= 11 for c in (g["events"], g["n"] - g["events"]))
        bounds = np.cumsum([g["n"] for g in groups[::-1]])  # from the highest risk down: rows above each boundary
        for k in bounds:
            tp, fp = ledger.counts(int(k))
            ttp, tfp = ledger.counts(threshold)
            assert all(d == 0 or d >= 11 for d in (abs(tp - ttp), abs(fp - tfp)))
    # its 365-day columns are computed, though the partner's own features have no such window
    names = FeatureMatrix(folder / "features").load()[2]["name"]
    year = np.flatnonzero(names.str.endswith("/365d").to_numpy())
    assert year.size > 0 and X[:, year].nnz > 0
    # scored at the alert threshold the model was published with (its own run's metrics.json) ...
    home = client.get_model_version(MODEL, "1").run_id
    published = json.loads(Path(client.download_artifacts(home, "metrics.json", str(tmp_path))).read_text())
    assert record["subgroup_threshold"]["threshold"] == published["subgroup_threshold"]["threshold"]
    # ... whose copy, and the rest of the owner's inputs it does not need, the partner does not keep
    fetched = stages / f"registered-{MODEL}-v1"
    kept = {p.name for p in fetched.rglob("*") if p.is_file()}
    assert kept - {".stage.json"} <= {"xgboost.json", "calibration.json", "columns.parquet", "xgboost_offset.json",
                                      "xgboost_blend.json"}, kept
    assert {"xgboost.json", "calibration.json", "columns.parquet"} <= kept
    # recalibrated on the partner's tuning split, which holds 11+ events and non-events here
    assert record["recalibrated"] is not None and "held_out/recalibrated/auroc" in run.data.metrics


def test_the_partners_report_lists_the_registered_model_beside_its_own(partner_run):
    [own] = [r for r in partner_run["partner"] if r.status == "published"]
    assert own.status == "published"
    html = own.report_path.read_text()
    assert "The table also shows 1 registered model from outside this study" in html
    assert "registered model from outside this study (external; a comparator, not this model)" in html
    assert f"academic ({MODEL} v1)" in html
    # it is no validation of the partner's own model
    assert "Internal validation only" in html


def test_a_second_night_reuses_the_fetched_model_and_its_run(partner_run, client, tmp_path, prefect_server):
    from forewarn.flows.nightly import nightly

    with flow_workdir(partner_run["work"], tmp_path / "prefect-home"):
        nightly(partner_run["study"])
    assert len(_validation_runs(client)) == 1  # the same model on the same rows: logged once


def test_models_that_cannot_be_validated_are_left_out_with_a_reason(partner_run, client):
    from forewarn.features.labels import load_task
    from forewarn.flows import tracking
    from forewarn.flows.nightly import registered_rows, resolve_registered

    log = Collect()
    warnings = log.warnings
    study, specs = partner_run["study"], [load_task("t2d_2y")]
    [found] = resolve_registered(study, specs, log)
    assert (found.label, found.site, found.study, found.task) == (f"{MODEL} v1", "academic", "home", "t2d_2y")
    assert len(warnings) == 3
    assert warnings[2] == f"registered model {MODEL}/1: {MODEL} v1 is named twice in validation.registered; validated once"
    assert warnings[0].startswith(f"registered model {MODEL}/9: not validated tonight: registered model '{MODEL}/9': "
                                  "the registry (sqlite:///") and f"has no model '{MODEL}' with version 9" in warnings[0]
    assert "has no model 'forewarn-ckd3_2y-academic' with alias 'champion'" in warnings[1]
    # its own study's model is validated by the study's designs already
    warnings.clear()
    assert resolve_registered(study.model_copy(update={"name": "home"}), specs, log) == []
    assert warnings[0] == (f"registered model {MODEL}: not validated: {MODEL} v1 is this study's own model, which its "
                           "validation designs evaluate at its sites already") and len(warnings) == 4
    warnings.clear()
    only = study.model_copy(update={"validation": study.validation.model_copy(update={"registered": [MODEL]})})
    assert resolve_registered(only, [load_task("ckd3_2y")], log) == []
    assert warnings == [f"registered model {MODEL}: not validated: {MODEL} v1 is a model of task t2d_2y, which this "
                        "study does not run (its tasks: ckd3_2y)"]
    # another definition of the task (its digest) is not scored: every site's row says why
    other = tracking.RegisteredModel(**{**found.__dict__, "task_digest": "0123456789abcdef"})
    warnings.clear()
    rows = {n: row for n, (row, _) in registered_rows(study, specs[0], other, {"community": None}, {}, {}, log).items()}
    assert rows["community"]["skipped"] is True and rows["community"]["design"] == "registered"
    assert rows["community"]["note"].startswith(f"not validated: {MODEL} v1 predicts another definition of t2d_2y "
                                                "(task digest 0123456789ab; this study's ")
    assert len(warnings) == 1
    # a site of the name the model was trained at may hold its very training rows: not scored there
    rows = {n: row for n, (row, _) in registered_rows(study, specs[0], found, {"academic": None}, {}, {}, log).items()}
    assert rows["academic"]["skipped"] is True and rows["academic"]["note"] == (
        f"not validated here: {MODEL} v1 was trained at a site named 'academic' (its study home), so these rows may be "
        "its own training data, not external")


def test_a_validation_that_fails_is_a_row_that_says_so_not_a_design_of_the_sites_model(partner_run, client, tmp_path):
    from forewarn.features.labels import load_task
    from forewarn.flows import tracking
    from forewarn.flows.cache import StageCache
    from forewarn.flows.nightly import registered_rows

    log = Collect()
    model = tracking.registered_model(MODEL)
    [(row, stage)] = registered_rows(partner_run["study"], load_task("t2d_2y"), model, {"community": {}},
                                   {"community": StageCache(tmp_path / "stages")}, {"community": []}, log).values()
    assert stage is None and row == {"design": "registered", "train_site": f"academic ({MODEL} v1)",
                                   "eval_site": "community", "recalibrated": None, "skipped": True,
                                   "note": "failed: KeyError: 'pull'", "failed": True}
    assert log.errors == [f"site community, task t2d_2y: registered model {MODEL} v1: validation failed: KeyError: 'pull'"]


def test_a_validation_only_study_validates_the_registered_model_and_trains_none(partner_run, client):
    from forewarn.flows.artifact import summary_markdown

    assert [(r.site, r.status) for r in partner_run["checker"]] == [("community", "validated")], partner_run["checker"]
    [result] = partner_run["checker"]
    assert (result.site, result.task, result.status, result.model_name, result.version) == (
        "community", "t2d_2y", "validated", MODEL, "1")
    run = client.get_run(result.run_id)
    assert run.data.tags["forewarn.site"] == "community" and run.data.tags["forewarn.validated_model"] == MODEL
    assert result.metrics["held_out/auroc"] == run.data.metrics["held_out/auroc"]
    # the home study's two sites' models and the partner's own: the validation-only study registers none
    assert sorted(m.name for m in client.search_registered_models()) == [
        "forewarn-t2d_2y-academic", "forewarn-t2d_2y-clinic", "forewarn-t2d_2y-community"]
    # the registry's path reproduces the home study's own external validation of the model on these rows,
    # metric for metric: the same model, columns, features, split, threshold and bootstrap
    experiment = client.get_experiment_by_name("forewarn/t2d_2y")
    [external] = client.search_runs([experiment.experiment_id], "tags.`forewarn.study` = 'home' AND "
                                     "tags.`forewarn.validation_design` = 'external' AND "
                                     "tags.`forewarn.train_site` = 'academic'")
    assert external.data.tags["forewarn.site"] == "community"
    assert run.data.metrics == external.data.metrics and len(run.data.metrics) > 20
    # the site's own model is still the home study's one version: the checker trained and registered nothing
    assert [str(v.version) for v in client.search_model_versions("name = 'forewarn-t2d_2y-community'")] == ["1"]
    stable = partner_run["checker_study"].sites[0].workdir / "reports" / "t2d_2y" / f"{MODEL}-v1.html"
    assert stable.read_text() == result.report_path.read_text()  # the stable copy of the run's report
    assert {a.path for a in client.list_artifacts(result.run_id)} >= {"report.html", "validation"}
    summary = summary_markdown(partner_run["checker_study"], partner_run["checker"])
    assert "0 published, 1 validations of registered models, 0 skipped" in summary
    assert f"| community | t2d_2y | validated | {result.metrics['held_out/auroc']:.3f} [" in summary


def test_the_validation_report_shows_the_model_its_participants_and_its_numbers(partner_run, client, tmp_path):
    import os
    from html import unescape

    from test_report import CHROMIUM, Page, _chromium, _console_problems

    [result] = [r for r in partner_run["checker"] if r.status == "validated"]
    text = result.report_path.read_text()
    page = Page(text)
    plain = unescape(page.text)
    metrics = client.get_run(result.run_id).data.metrics
    assert f"t2d_2y: external validation of {MODEL} v1 at site “community”" in plain
    assert f"MLflow run {result.run_id}" in plain
    assert "academic, study “home”" in plain and "windows 30d, 365d, full" in plain
    assert (f"AUROC {metrics['held_out/auroc']:.3f} ({metrics['held_out/auroc_ci_low']:.3f}–"
            f"{metrics['held_out/auroc_ci_high']:.3f})") in plain
    assert f"{metrics['held_out/recalibrated/auroc']:.3f}" in plain
    for heading in ("1. The model validated", "2. Participants at this site", "3. Performance on this site's held-out split",
                    "4. Subgroups", "5. Limitations"):
        assert heading in plain
    assert "age band" in plain.lower() and "female" in plain
    assert page.tags.count("img") == 1 and "Observed rate against mean predicted risk on this site's held-out" in plain
    if not CHROMIUM.is_file():
        if os.environ.get("FOREWARN_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"no Chromium at {CHROMIUM}")
        pytest.skip(f"no Chromium at {CHROMIUM} (CI installs it)")
    dump = _chromium(["--dump-dom", result.report_path.resolve().as_uri()], tmp_path / "profile")
    assert dump.returncode == 0 and not _console_problems(dump.stderr), dump.stderr[-2000:]
    assert "4. Subgroups" in dump.stdout
