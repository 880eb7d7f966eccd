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
        (BASE | {"features": {"windowz": ["1d"]}}, r"features.windowz: unknown key; allowed keys here are \['aggs', 'batch_subjects', 'min_code_frequency', 'min_code_subjects', 'n_workers'"),
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
