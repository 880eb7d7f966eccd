from __future__ import annotations

import pytest

from forewarn.flows.study import load_study, parse_study

BASE = {"name": "north", "tasks": ["t2d_2y"], "sites": [{"name": "a", "source": {"location": "a/omop.duckdb"}}]}


def test_relative_paths_resolve_against_the_study_folder(tmp_path):
    study = parse_study(BASE, base_dir=tmp_path)
    site = study.sites[0]
    assert site.source.location == str(tmp_path.resolve() / "a/omop.duckdb")
    assert site.workdir == tmp_path.resolve() / "sites/a/work"
    assert study.schedule.cron == "0 2 * * *" and study.demo is False


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (BASE | {"sheduel": {}}, r"sheduel: unknown key; allowed keys here are \[.*'demo', .*'evaluation', .*'features', .*'schedule'"),
        (BASE | {"features": {"windowz": ["1d"]}}, r"features.windowz: unknown key; allowed keys here are \['aggs', 'audit_vocabularies', 'batch_subjects', 'min_code_frequency', 'min_code_subjects', 'n_workers'"),
        (BASE | {"sites": [{"name": "a", "source": {"location": "x", "fromat": "omop"}}]}, r"sites.0.source.fromat: unknown key; allowed keys here are \['db_schema', 'format', 'location'\]"),
        (BASE | {"sites": BASE["sites"] * 2}, r"site names must be unique; \['a'\]"),
        (BASE | {"sites": [{"name": "network", "source": {"location": "x"}}]},
         r"a site cannot be named 'network': the name is the network model's in the registry \(forewarn-<task>-network\)"),
        (BASE | {"schedule": {"cron": "0 2 * *"}}, "cron must have 5 fields"),
        (BASE | {"models": {"leaf_min_cell": 1}},
         r"models.leaf_min_cell must be at least 11; got 1. The trees leave the site"),
        (BASE | {"features": {"min_code_subjects": 5}},
         r"features.min_code_subjects must be at least 11; got 5. The column names leave the site"),
        (BASE | {"sites": []}, "sites: List should have at least 1 item"),
    ],
)
def test_invalid_studies_name_the_key_and_the_fix(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        parse_study(data, base_dir=tmp_path)


def test_load_study_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_study(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        load_study(bad)


def test_temporal_design_needs_a_date(tmp_path):
    with pytest.raises(ValueError, match="the temporal design needs temporal_from"):
        parse_study(BASE | {"validation": {"designs": ["internal", "temporal"]}}, base_dir=tmp_path)
    study = parse_study(BASE | {"validation": {"designs": ["temporal"], "temporal_from": "2021-07-01"}}, base_dir=tmp_path)
    assert str(study.validation.temporal_from) == "2021-07-01"


def test_network_design_and_its_rounds(tmp_path):
    study = parse_study(BASE | {"validation": {"designs": ["internal", "network"], "rounds_per_visit": 5}}, base_dir=tmp_path)
    assert study.validation.designs == ["internal", "network"] and study.validation.rounds_per_visit == 5
    assert parse_study(BASE, base_dir=tmp_path).validation.rounds_per_visit == 10
    with pytest.raises(ValueError, match="validation.rounds_per_visit"):
        parse_study(BASE | {"validation": {"rounds_per_visit": 0}}, base_dir=tmp_path)
    with pytest.raises(ValueError, match="validation.designs.0"):
        parse_study(BASE | {"validation": {"designs": ["federated"]}}, base_dir=tmp_path)


def test_registered_models_to_validate_are_named_as_the_registry_names_them(tmp_path):
    from forewarn.flows.tracking import parse_model_ref

    refs = ["forewarn-t2d_2y-academic", "forewarn-t2d_2y-network@challenger", "forewarn-ckd3_2y-academic/12"]
    study = parse_study(BASE | {"validation": {"registered": refs}}, base_dir=tmp_path)
    assert study.validation.registered == refs and parse_study(BASE, base_dir=tmp_path).validation.registered == []
    assert [parse_model_ref(r) for r in refs] == [("forewarn-t2d_2y-academic", "champion", None),
                                                  ("forewarn-t2d_2y-network", "challenger", None),
                                                  ("forewarn-ckd3_2y-academic", None, "12")]
    with pytest.raises(ValueError, match=r"validation.registered: Value error, 'forewarn-t2d_2y-academic/0' is not a registered "
                                         r"model: write NAME \(its champion\), NAME@ALIAS or NAME/VERSION"):
        parse_study(BASE | {"validation": {"registered": ["forewarn-t2d_2y-academic/0"]}}, base_dir=tmp_path)
    with pytest.raises(ValueError, match="each registered model is named once"):  # its champion, twice
        parse_study(BASE | {"validation": {"registered": ["m", "m@champion"]}}, base_dir=tmp_path)


def test_a_source_location_with_a_password_is_refused_without_echoing_it(tmp_path):
    url = "postgresql://omop:hunter2@db.site-a.example/cdm"
    with pytest.raises(ValueError) as exc:
        parse_study(BASE | {"sites": [{"name": "a", "source": {"location": url}}]}, base_dir=tmp_path)
    message = str(exc.value)
    assert "sites.0.source.location" in message
    assert "a site's source location must not contain a password; got 'postgresql://omop:***@db.site-a.example/cdm'" in message
    assert "~/.pgpass" in message and "hunter2" not in message
    # without the password the same URL is a valid source
    study = parse_study(BASE | {"sites": [{"name": "a", "source": {"location": "postgresql://omop@db.site-a.example/cdm"}}]},
                        base_dir=tmp_path)
    assert study.sites[0].source.location == "postgresql://omop@db.site-a.example/cdm"


def test_reporting_statements_parse_and_reach_one_task_s_report(tmp_path):
    study = parse_study(BASE | {"reporting": {"intended_use": {"t2d_2y": "GPs at routine visits; an alert prompts an HbA1c."},
                                              "ethics": "NRES 21/NW/0123", "funding": "None."}}, base_dir=tmp_path)
    shown = study.reporting.for_task("t2d_2y")
    assert shown["intended_use"] == "GPs at routine visits; an alert prompts an HbA1c."
    assert [(s["field"], s["text"]) for s in shown["statements"]] == [
        ("ethics", "NRES 21/NW/0123"), ("registration", None), ("funding", "None."), ("conflicts_of_interest", None),
        ("public_involvement", None), ("data_availability", None)]
    assert study.reporting.for_task("ckd3_2y")["intended_use"] is None
    study.reporting.check_tasks(["t2d_2y"])
    with pytest.raises(ValueError, match=r"reporting.intended_use names task\(s\) \['t2d_2y'\] that the study does not "
                                         r"run; its tasks are \['ckd3_2y'\]"):
        study.reporting.check_tasks(["ckd3_2y"])


@pytest.mark.parametrize(
    ("reporting", "message"),
    [
        ({"ethic": "x"}, r"reporting.ethic: unknown key; allowed keys here are \['conflicts_of_interest', 'data_availability', "
                         r"'ethics', 'funding', 'intended_use', 'public_involvement', 'registration'\]"),
        ({"ethics": "  "}, "reporting.ethics: Value error, a statement must not be blank"),
        ({"funding": "x" * 2001}, "reporting.funding: String should have at most 2000 characters"),
        ({"intended_use": {"t2d_2y": ""}}, r"intended_use of task 't2d_2y' must be 1 to 2000 characters; got 0"),
    ],
)
def test_invalid_reporting_names_the_key(tmp_path, reporting, message):
    with pytest.raises(ValueError, match=message):
        parse_study(BASE | {"reporting": reporting}, base_dir=tmp_path)


def test_the_demo_study_states_everything_its_reports_ask_for(tmp_path):
    import yaml

    from forewarn.flows.study import demo_study_yaml

    study = parse_study(yaml.safe_load(demo_study_yaml({"academic": tmp_path / "a.duckdb"}, tmp_path)), base_dir=tmp_path)
    study.reporting.check_tasks(study.tasks)
    for task in study.tasks:
        shown = study.reporting.for_task(task)
        assert shown["intended_use"].startswith("A demonstration on synthetic records: not for clinical use.")
        assert "; an alert prompts " in shown["intended_use"]  # users, pathway and the action an alert prompts
        assert all(s["text"] for s in shown["statements"])
    assert study.evaluation.learning_curve.fractions == [0.25, 0.5, 1.0]  # the demo's reports show a learning curve


# --- the champion's own settings (``flows.nightly.champion_settings``) ---------------------

def _champion(provenance: dict, **study):
    from forewarn.features.labels import load_task
    from forewarn.flows.nightly import champion_settings

    spec = load_task("t2d_2y")
    base = parse_study(BASE | {"features": {"windows": ["365d", "full"], "n_workers": 2}} | study, base_dir=".")
    assert base.features.n_workers == 2
    return champion_settings(base, spec, "3", {"study": "north", "task_digest": spec.digest(), "split_seed": "0"}
                             | provenance)


def test_the_champion_is_scored_with_its_own_feature_settings_and_this_studys_speed():
    features, notes = _champion({"features": {"windows": ["30d", "full"], "n_workers": 7, "retired_setting": 1}})
    assert features.windows == ["30d", "full"] and features.n_workers == 2
    assert notes == [
        "champion v3 was trained with feature settings this version of Forewarn no longer has (retired_setting); its "
        "columns are computed without them",
        "champion v3 is scored in its columns computed with the feature settings it was trained with: windows "
        "30d,full (this study's 365d,full)"]
    features, notes = _champion({"features": {"windows": ["365d", "full"], "rollup_icd10": False}})
    assert notes == ["champion v3 is scored in its columns computed with the feature settings it was trained with: "
                     "rollup_icd10 false (this study's true)"]
    assert _champion({"features": {"windows": ["365d", "full"]}})[1] == []


def test_a_setting_the_champions_run_does_not_name_takes_its_default_not_this_studys():
    # slope_min_days came after the champion: it was trained as the default (0) computes
    features, notes = _champion({"features": {"windows": ["365d", "full"]}}, features={
        "windows": ["365d", "full"], "n_workers": 2, "slope_min_days": 30})
    assert features.slope_min_days == 0
    assert notes == ["champion v3 is scored in its columns computed with the feature settings it was trained with: "
                     "slope_min_days 0 (this study's 30)"]


def test_a_champion_whose_settings_are_unknown_or_invalid_is_scored_with_this_studys():
    features, notes = _champion({"features": None})
    assert features.windows == ["365d", "full"]
    assert notes == ["champion v3's run does not record its feature settings, so it is scored with this study's"]
    features, notes = _champion({"features": {"windows": ["7x"]}})
    assert features.windows == ["365d", "full"]
    assert len(notes) == 1 and notes[0].startswith("champion v3's feature settings are not valid here (")
    assert "windows must be '<N>d'" in notes[0] and notes[0].endswith("), so it is scored with this study's")


def test_the_decision_names_a_champion_from_another_study_task_definition_or_split():
    _, notes = _champion({"study": "south", "task_digest": "0123456789abcdef0000", "split_seed": "4",
                          "features": {"windows": ["365d", "full"]}}, split_seed=1)
    from forewarn.features.labels import load_task

    digest = load_task("t2d_2y").digest()
    assert notes == [
        "champion v3 was registered by study 'south', not 'north'; both are scored on this study's held-out rows",
        f"champion v3 was trained for another definition of t2d_2y (task digest 0123456789ab; this study's "
        f"{digest[:12]}) and is judged on this definition's labels",
        "champion v3 was trained with split_seed 4 (this study's 1): some of these held-out rows may be its "
        "training rows, which favours it"]
