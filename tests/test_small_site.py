"""A site with too few events for a model of its own still takes part: it is an external
site for the other sites' models, and it tunes and evaluates the network's model (the
demo's community site for the rare outcome). Until session 25 such a site left the
night entirely, and with it the external and network designs of every other site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import flow_workdir


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, demo_network, prefect_server):
    from forewarn.records.demo import SITES, generate_site, site_seed

    work = tmp_path_factory.mktemp("small-work")
    tiny = work / "tiny" / "omop.duckdb"
    generate_site(tiny, SITES["community"], 150, site_seed(5, "tiny"))
    with flow_workdir(work, tmp_path_factory.mktemp("prefect-home")):
        from forewarn.flows.nightly import nightly
        from forewarn.flows.study import parse_study

        study = parse_study(
            {
                "name": "small-site",
                "demo": True,
                # a second task that no site has events enough for: one night runs both
                "tasks": ["t2d_2y", "pancreatic_cancer_1y"],
                "sites": [{"name": "community", "source": {"location": str(demo_network["community"])}},
                          {"name": "tiny", "source": {"location": str(tiny)}}],
                "evaluation": {"bootstrap": 20, "shap_rows": 200},
                "models": {"n_jobs": 2, "search": {"trials": 0}, "blend": "tuned"},  # the blend is not under test (time)
                "promotion": {"slope_low": 0.5, "slope_high": 2.0},  # worklists, not calibration, are under test
                "validation": {"designs": ["internal", "external", "network"]},
                "worklist": {"enabled": True},
            },
            base_dir=work,
        )
        results = nightly(study)
        yield {"work": work, "study": study, "results": {r.site: r for r in results if r.task == "t2d_2y"},
               "all": results}


def test_the_small_site_has_no_model_of_its_own_and_says_why(small_run):
    tiny = small_run["results"]["tiny"]
    assert tiny.status == "skipped" and "the train split must hold at least 11 subjects with the outcome" in tiny.reason
    assert small_run["results"]["community"].status == "published"


def test_one_night_runs_every_task_on_one_pull_and_a_task_without_events_is_skipped_at_each_site(small_run):
    """The study's two tasks share each site's pull (computed once) and each has its own
    labels; the rare outcome has fewer than 11 train subjects with it at both sites, so
    neither trains it, no model of it is registered, its worklist says there is no
    champion, and the other task is published as it would be alone."""
    import mlflow

    results = {(r.site, r.task): r for r in small_run["all"]}
    assert set(results) == {(site, task) for site in ("community", "tiny") for task in ("t2d_2y", "pancreatic_cancer_1y")}
    for site in ("community", "tiny"):
        rare = results[(site, "pancreatic_cancer_1y")]
        assert rare.status == "skipped", rare
        assert "the train split must hold at least 11 subjects with the outcome" in rare.reason
        assert not rare.run_id and not rare.model_name
        assert "has no champion" in rare.worklist and not rare.worklist_failed, rare.worklist
    assert results[("community", "t2d_2y")].status == "published"
    for site in small_run["study"].sites:
        stages = site.workdir / "stages"
        assert len(list((stages / "pull").iterdir())) == 1  # one pull for both tasks
        assert (stages / "label-t2d_2y").is_dir() and (stages / "label-pancreatic_cancer_1y").is_dir()
    client = mlflow.MlflowClient(f"sqlite:///{small_run['work'] / 'mlruns' / 'mlflow.db'}")
    names = {m.name for m in client.search_registered_models()}
    assert "forewarn-t2d_2y-community" in names and not any("pancreatic" in n for n in names), names


def test_the_other_sites_model_is_validated_at_the_small_site(small_run):
    import mlflow

    big = small_run["results"]["community"]
    client = mlflow.MlflowClient(f"sqlite:///{small_run['work'] / 'mlruns' / 'mlflow.db'}")
    external = json.loads(Path(client.download_artifacts(big.run_id, "validation/external.json")).read_text())["validations"]
    designs = {(v["design"], v["eval_site"]) for v in external}
    assert ("external", "tiny") in designs and ("network", "community") in designs
    at_tiny = next(v for v in external if v["design"] == "external")
    assert at_tiny["train_site"] == "community"
    report = big.report_path.read_text()
    assert "tiny" in report


def test_the_network_model_trains_with_the_small_site_tuning_and_evaluating_it(small_run):
    big = small_run["results"]["community"]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{small_run['work'] / 'mlruns' / 'mlflow.db'}")
    external = json.loads(Path(client.download_artifacts(big.run_id, "validation/external.json")).read_text())["validations"]
    (network,) = [v for v in external if v["design"] == "network"]
    assert network["train_site"] == "community + tiny" and "not trained" not in (network.get("note") or ""), network
    # The small site evaluates the network's model in a run (and report) of its own.
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`forewarn.site` = 'tiny' and tags.`forewarn.validation_design` = 'network'")
    assert len(runs) == 1
    tiny_report = small_run["study"].sites[1].workdir / "reports" / "t2d_2y" / "network-report.html"
    assert tiny_report.is_file()


def test_the_small_site_s_worklist_is_scored_by_the_network_s_champion(small_run, tmp_path, restore_tracking):
    import pandas as pd
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from forewarn.flows.cli import app

    tiny, big = small_run["results"]["tiny"], small_run["results"]["community"]
    folder = small_run["study"].sites[1].workdir / "worklists" / "small-site"
    assert tiny.worklist == (f"worklist: {folder / 't2d_2y.parquet'} (scored by forewarn-t2d_2y-network v1, the "
                             "network's; forewarn-t2d_2y-tiny has no champion)")
    assert big.worklist.startswith("worklist: ") and "(scored by forewarn-t2d_2y-community v1" in big.worklist
    assert not tiny.worklist_failed and not big.worklist_failed
    worklist = pd.read_parquet(folder / "t2d_2y.parquet")
    assert len(worklist) > 0 and worklist["predicted_boolean_probability"].is_monotonic_decreasing
    assert worklist["predicted_boolean_value"].isna().all()  # a network model has no threshold of its own
    events = next((small_run["study"].sites[1].workdir / "stages" / "pull").glob("*/pull/events"))
    out = tmp_path / "tiny.parquet"
    result = CliRunner().invoke(app, ["score", "forewarn-t2d_2y-network", str(events), "--eligible", "--by-risk",
                                      "--out", str(out), "--tracking-uri",
                                      f"sqlite:///{small_run['work'] / 'mlruns' / 'mlflow.db'}"])
    assert result.exit_code == 0, result.output
    assert pq.read_table(folder / "t2d_2y.parquet").equals(pq.read_table(out))


def test_another_site_s_champion_scores_only_where_it_was_validated(small_run, tmp_path, restore_tracking):
    """tiny has no model of its own; community's champion was validated there (the external
    design): it scores tiny's worklist without community's threshold, or at a budget."""
    import json
    import logging
    import math

    import pandas as pd
    from typer.testing import CliRunner

    from forewarn.features.labels import load_task
    from forewarn.flows import tracking
    from forewarn.flows.cache import StageCache
    from forewarn.flows.cli import app
    from forewarn.flows.study import WorklistSettings
    from forewarn.flows.worklist import worklist_model, worklists

    uri = f"sqlite:///{small_run['work'] / 'mlruns' / 'mlflow.db'}"
    tracking.configure(uri)
    spec, tiny = load_task("t2d_2y"), small_run["study"].sites[1]
    study = small_run["study"].model_copy(update={"worklist": WorklistSettings(enabled=True, models=["other_sites"])})
    choice = worklist_model(study, spec, "tiny")
    assert choice.model.label == "forewarn-t2d_2y-community v1" and choice.whose == "other_sites" and not choice.passed
    assert choice.validation is not None  # community's model at tiny: the external run of that very model
    here = tracking.auroc_text(choice.validation)
    # community has no other site with a champion validated there: tiny has none at all
    assert worklist_model(study, spec, "community").passed == ("forewarn-t2d_2y-tiny has no champion",)
    # a site by its name is another site's champion too; the site itself by name is not another
    named = study.model_copy(update={"worklist": WorklistSettings(enabled=True, models=["tiny", "community"])})
    assert worklist_model(named, spec, "tiny") == choice
    assert worklist_model(named, spec, "community").passed == ("forewarn-t2d_2y-tiny has no champion",)
    cache = StageCache(tiny.workdir / "stages", site="tiny")
    [key] = [p.name for p in (cache.root / "pull").iterdir()]
    pull = cache.run("pull", key, lambda out: pytest.fail("the pull is cached"))
    events = pull.result.events_dir
    scored = tmp_path / "scored.parquet"
    result = CliRunner().invoke(app, ["score", "forewarn-t2d_2y-community", str(events), "--eligible", "--by-risk",
                                      "--out", str(scored), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert ("  the model was trained at community and these events are tiny's: its threshold and calibration were set "
            "for community's people; --alert-budget sets alerts by this site's capacity instead, and --recalibrate-here "
            "takes its risks from the calibrator its external validation here fitted") in result.output
    # tiny's tuning split is too small for a calibrator of its own: --recalibrate-here says so and scores nothing
    refused = CliRunner().invoke(app, ["score", "forewarn-t2d_2y-community", str(events), "--eligible", "--recalibrate-here",
                                       "--out", str(tmp_path / "refused.parquet"), "--tracking-uri", uri])
    assert refused.exit_code != 0 and not (tmp_path / "refused.parquet").exists()
    assert ("forewarn-t2d_2y-community v1 has no external validation at tiny that fitted a calibrator there: run the "
            "study's external design with tiny's data (its tuning split needs 11 or more events and non-events), or "
            "score without --recalibrate-here.") in " ".join(refused.output.split())
    expected = pd.read_parquet(scored)
    for budget in (None, 100):
        elsewhere = tiny.model_copy(update={"workdir": tmp_path / f"budget-{budget}"})
        other = study.model_copy(update={"sites": [small_run["study"].sites[0], elsewhere],
                                         "worklist": study.worklist.model_copy(update={"alert_budget": budget})})
        notes = worklists(other, [spec], {"tiny": pull}, {"tiny": StageCache(tmp_path / f"stages-{budget}")},
                          {"tiny": []}, logging.getLogger("test"))
        folder = elsewhere.workdir / "worklists" / "small-site"
        alerts = "no alerts: its threshold was set at community" if budget is None else "alerts at 100 per 1,000"
        assert notes[("tiny", "t2d_2y")] == (f"worklist: {folder / 't2d_2y.parquet'} (scored by forewarn-t2d_2y-"
                                             f"community v1, community's, validated here: held-out AUROC {here}; "
                                             "its risks as calibrated at community (its validation here could not "
                                             "recalibrate: fewer than 11 tuning events or non-events); "
                                             f"{alerts})", False)
        worklist = pd.read_parquet(folder / "t2d_2y.parquet")
        summary = json.loads((folder / "t2d_2y.json").read_text())
        assert worklist["predicted_boolean_probability"].equals(expected["predicted_boolean_probability"])
        assert summary["whose"] == "other_sites" and summary["validated_here"] == choice.validation
        assert choice.recalibration is None and summary["recalibrated_here"] is None  # tiny's tuning split: too few
        assert summary["threshold"] is None and summary["alert_budget"] == budget
        if budget is None:
            assert worklist["predicted_boolean_value"].isna().all() and summary["alerts"] is None
        else:
            k = math.ceil(100 * len(worklist) / 1000)
            assert worklist["predicted_boolean_value"].tolist() == [True] * k + [False] * (len(worklist) - k)
            assert summary["alerts"] == k and summary["alerts_by"] == "budget"
