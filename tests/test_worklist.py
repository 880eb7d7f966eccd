"""The nightly worklist's settings and where its line goes in the run's results (fast;
the worklist itself is made and checked against ``forewarn score`` in test_score.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from forewarn.flows.nightly import SiteResult, SitesFailed, raise_if_failed, with_worklists
from forewarn.flows.study import WorklistSettings, demo_study_yaml, parse_study


def test_worklists_are_off_unless_asked_and_the_demo_asks():
    assert WorklistSettings() == WorklistSettings(enabled=False, models=["site", "network"])
    demo = yaml.safe_load(demo_study_yaml({"academic": Path("/d/a.duckdb")}, Path("/d")))
    assert demo["worklist"] == {"enabled": True, "models": ["site", "network", "other_sites"]}


@pytest.mark.parametrize(("models", "message"), [
    (["site", "site"], "worklist.models names a model twice: ['site', 'site']"),
    ([], "List should have at least 1 item"),
    (["clinic"], "worklist.models names ['clinic'], which is neither site, network, other_sites nor a site of the "
                 "study (a)."),
])
def test_bad_worklist_models_are_refused(tmp_path, models, message):
    study = {"name": "s", "tasks": ["t2d_2y"], "sites": [{"name": "a", "source": {"location": "a.duckdb"}}],
             "worklist": {"enabled": True, "models": models}}
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_study(study, base_dir=tmp_path)


def test_worklist_models_may_name_a_site_and_no_site_may_be_named_like_a_kind(tmp_path):
    study = {"name": "s", "tasks": ["t2d_2y"], "sites": [{"name": "a", "source": {"location": "a.duckdb"}},
                                                         {"name": "b", "source": {"location": "b.duckdb"}}],
             "worklist": {"enabled": True, "models": ["site", "b", "network"]}}
    assert parse_study(study, base_dir=tmp_path).worklist.models == ["site", "b", "network"]
    study["sites"][1]["name"] = "other_sites"
    study["worklist"]["models"] = ["site"]
    with pytest.raises(ValueError, match="a site cannot be named site or other_sites: worklist.models gives those"):
        parse_study(study, base_dir=tmp_path)


@pytest.mark.parametrize(("budget", "message"), [
    (0, "worklist.alert_budget: Input should be greater than 0"),
    (1001, "worklist.alert_budget: Input should be less than or equal to 1000"),
])
def test_an_alert_budget_is_per_1000_people(tmp_path, budget, message):
    study = {"name": "s", "tasks": ["t2d_2y"], "sites": [{"name": "a", "source": {"location": "a.duckdb"}}],
             "worklist": {"enabled": True, "alert_budget": budget}}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_study(study, base_dir=tmp_path)


def test_each_worklist_line_goes_on_its_own_result():
    results = [
        SiteResult("academic", "t2d_2y", "published", version="3"),
        SiteResult("academic", "t2d_2y", "validated", model_name="forewarn-t2d_2y-other"),
        SiteResult("community", "t2d_2y", "held", reason="1 to 10 people changed"),
    ]
    notes = {("academic", "t2d_2y"): ("worklist: a.parquet (scored by forewarn-t2d_2y-academic v3)", False),
             ("community", "t2d_2y"): ("worklist: c.parquet (scored by forewarn-t2d_2y-network v1, the network's)", False),
             ("community", "ckd3_2y"): ("worklist failed: no events", True)}
    out = with_worklists(results, notes)
    assert [(r.site, r.task, r.status, r.worklist, r.worklist_failed) for r in out] == [
        ("academic", "t2d_2y", "published", "worklist: a.parquet (scored by forewarn-t2d_2y-academic v3)", False),
        ("academic", "t2d_2y", "validated", "", False),  # a registered model's validation is not the study's result
        ("community", "t2d_2y", "held", "worklist: c.parquet (scored by forewarn-t2d_2y-network v1, the network's)",
         False),
        ("community", "ckd3_2y", "skipped", "worklist failed: no events", True),
    ]
    assert out[3].reason == "no result of the study's tonight"
    # a note without a result of its own and no failure is left to the log
    assert with_worklists([], {("academic", "t2d_2y"): ("no worklist: the site's pull failed tonight", False)}) == []
    assert results[0].worklist == ""  # the input is not changed
    # where the study has no result of its own (a validation-only study), a registered model's validation takes it
    [validated] = with_worklists([results[1]], {("academic", "t2d_2y"): ("worklist: a.parquet", False)})
    assert validated.status == "validated" and validated.worklist == "worklist: a.parquet"
    with pytest.raises(SitesFailed, match=r"^1 of 4 site-task runs failed: community/ckd3_2y: worklist failed: no events$"):
        raise_if_failed(out)


def test_no_champion_is_a_missing_model_or_alias_and_any_other_registry_error_is_raised(tmp_path, restore_tracking,
                                                                                        monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    from forewarn.flows import tracking
    from forewarn.flows.worklist import champion_version

    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    client.create_registered_model("forewarn-t2d_2y-academic")  # no version, no alias
    assert champion_version("forewarn-t2d_2y-academic") is None
    assert champion_version("forewarn-t2d_2y-nowhere") is None
    with mlflow.start_run() as run:
        mlflow.log_param("p", 1)
    client.create_model_version("forewarn-t2d_2y-academic", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.create_model_version("forewarn-t2d_2y-academic", f"runs:/{run.info.run_id}/model", run.info.run_id)
    assert champion_version("forewarn-t2d_2y-academic") is None
    client.set_registered_model_alias("forewarn-t2d_2y-academic", "champion", "2")
    assert champion_version("forewarn-t2d_2y-academic") == "2"

    def refused(self, name):
        raise MlflowException("not allowed", error_code="PERMISSION_DENIED")

    monkeypatch.setattr(mlflow.MlflowClient, "get_registered_model", refused)
    with pytest.raises(MlflowException, match="not allowed"):
        champion_version("forewarn-t2d_2y-academic")
