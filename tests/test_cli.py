from __future__ import annotations

import pytest
from typer.testing import CliRunner

from forewarn.flows.cli import app, build_deployment
from forewarn.flows.study import parse_study

runner = CliRunner()


def test_help_lists_the_subcommands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "run", "serve", "ui"):
        assert command in result.output


def test_run_with_a_missing_study_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "does not exist; pass the path of a study YAML" in result.output


def test_run_with_a_misspelt_key_names_it(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("name: x\ntasks: [t2d_2y]\nsites: [{name: a, source: {location: a.duckdb}}]\nshedule: {cron: '0 2 * * *'}\n")
    result = runner.invoke(app, ["run", str(study)])
    assert result.exit_code == 2
    assert "shedule: unknown key; allowed keys here are" in result.output


def test_run_with_a_missing_source_names_the_site(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("name: x\ntasks: [t2d_2y]\nsites: [{name: north, source: {location: north.duckdb}}]\n")
    result = runner.invoke(app, ["run", str(study)])
    assert result.exit_code == 2
    assert "sources do not exist" in result.output and "north:" in result.output


def test_run_with_an_intended_use_for_a_task_not_run_names_it(tmp_path):
    (tmp_path / "north.duckdb").touch()
    study = tmp_path / "study.yaml"
    study.write_text("name: x\ntasks: [t2d_2y]\nsites: [{name: north, source: {location: north.duckdb}}]\n"
                     "reporting: {intended_use: {t2d: screening}}\n")
    result = runner.invoke(app, ["run", str(study)])
    assert result.exit_code == 2
    assert ("reporting.intended_use names task(s) ['t2d'] that the study does not run; its tasks are ['t2d_2y']"
            in " ".join(result.output.split()))


@pytest.mark.parametrize(("cron", "tz"), [("0 2 * * *", "UTC"), ("30 1 * * 1-5", "Europe/Berlin")])
def test_serve_builds_a_cron_deployment_with_the_study_as_parameter(tmp_path, cron, tz):
    study = parse_study(
        {"name": "x", "tasks": ["t2d_2y"], "sites": [{"name": "a", "source": {"location": "a.duckdb"}}], "schedule": {"cron": cron, "timezone": tz}},
        base_dir=tmp_path,
    )
    deployment = build_deployment(study)
    assert deployment.name == "x-nightly"
    (schedule,) = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == (cron, tz)
    assert deployment.parameters["study"]["sites"][0]["name"] == "a"


def test_pull_prints_the_reconciled_report(tmp_path):
    from crossformat import write_omop_folder

    src = write_omop_folder(tmp_path / "omop")
    result = runner.invoke(app, ["pull", "omop", str(src), "--site", "north", "--out", str(tmp_path / "out"), "--demo-secret"])
    assert result.exit_code == 0, result.output
    assert "site north: 3 subjects, 22 events; read 15 = kept 15 + quarantined 0" in result.output
    assert "measurement" in result.output and (tmp_path / "out" / "events" / "0.parquet").is_file()


def test_pull_errors_are_clear(tmp_path):
    result = runner.invoke(app, ["pull", "csv", str(tmp_path), "--site", "a", "--out", str(tmp_path / "o"), "--demo-secret"])
    assert result.exit_code == 2 and "format must be one of ['omop', 'meds', 'fhir']; got 'csv'" in result.output
    result = runner.invoke(app, ["pull", "omop", str(tmp_path / "none.duckdb"), "--site", "a", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no de-identification secret for site 'a'" in result.output


def test_label_and_featurize_outside_a_flow(tmp_path):
    import yaml
    from test_aces import ACES_T2D, FOREWARN_T2D, dataset

    events = dataset(tmp_path / "events")
    ours, aces = tmp_path / "ours.yaml", tmp_path / "aces.yaml"
    ours.write_text(yaml.safe_dump(FOREWARN_T2D))
    aces.write_text(ACES_T2D)
    a = runner.invoke(app, ["label", str(ours), str(events), "--out", str(tmp_path / "a.parquet")])
    b = runner.invoke(app, ["label", str(aces), str(events), "--out", str(tmp_path / "b.parquet")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert "9 labels (5 positive)" in a.output and "[ACES]" in b.output and "9 labels (5 positive)" in b.output
    result = runner.invoke(app, ["featurize", str(events), str(tmp_path / "a.parquet"), "--out", str(tmp_path / "X"),
                                 "--windows", "7d,full", "--aggs", "code/count", "--min-code-subjects", "1"])
    assert result.exit_code == 0, result.output
    assert "9 rows x" in result.output and (tmp_path / "X" / "X.npz").is_file()
    bad = runner.invoke(app, ["featurize", str(events), str(tmp_path / "a.parquet"), "--out", str(tmp_path / "Y"), "--windows", "7"])
    assert bad.exit_code == 2 and "windows must be '<N>d'" in bad.output


def test_the_summary_names_each_tasks_network_model_or_says_there_is_none(tmp_path, restore_tracking):
    import mlflow

    from forewarn.flows import tracking
    from forewarn.flows.cli import network_lines

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.configure(uri, str(tmp_path / "artifacts"), cwd=tmp_path)
    client = mlflow.MlflowClient(uri)
    name = tracking.registered_name("t2d_2y", tracking.NETWORK)
    client.create_registered_model(name)
    version = client.create_model_version(name, source=(tmp_path / "model").as_uri())
    client.set_registered_model_alias(name, "champion", version.version)
    assert network_lines(["t2d_2y", "pancreatic_cancer_1y"]) == [
        f"   network  t2d_2y                model {name} v1 (champion), trained across the sites; its report at each "
        "site: reports/t2d_2y/network-report.html",
        "   network  pancreatic_cancer_1y  no network model: the network row of each site's report says why (section 12)",
    ]


def test_alias_text_says_what_the_aliases_mean():
    from forewarn.flows.tracking import alias_text

    assert alias_text(("challenger", "champion")) == "champion"
    assert alias_text(("champion",)) == "champion"
    assert alias_text(("challenger",)) == "challenger, not promoted"
    assert alias_text(()) == "no alias: an earlier version"


def test_the_summary_gives_each_result_its_decision_or_says_it_is_an_earlier_nights():
    from forewarn.flows.cli import decision_line
    from forewarn.flows.nightly import SiteResult

    kept = SiteResult("academic", "t2d_2y", "published", model_name="forewarn-t2d_2y-academic", version="2",
                      decision="forewarn-t2d_2y-academic v2 kept as challenger (champion stays v1): AUROC lower 95% "
                      "bound 0.917 < champion v1 AUROC 0.971 - margin 0.02 = 0.951 on the same held-out rows")
    assert decision_line(kept) == "decision: kept as challenger (champion stays v1); why: the report's section 15"
    alert = SiteResult(**{**kept.__dict__, "drift": {"decision": {"action": "alert", "reasons": ["feature x drifted"]}}})
    assert decision_line(alert) == ("DRIFT ALERT, a person reviews before any promotion (the report's section 14); "
                                    "decision: kept as challenger (champion stays v1); why: the report's section 15")
    assert decision_line(SiteResult(**{**kept.__dict__, "cached": True})) == (
        "unchanged since an earlier night (same data and settings): its report and decision stand; the aliases above "
        "are the registry's now")
    unread = SiteResult(**{**kept.__dict__, "cached": True, "aliases_recorded": True})
    assert decision_line(unread).endswith("the aliases above are as that night recorded them (the registry could not "
                                          "be read: see the warning above)")


def test_demo_refuses_options_that_its_existing_network_would_ignore(tmp_path):
    import json

    from forewarn.records.demo import SITES

    for name in SITES:  # a network already there (its files are not opened before the check)
        (tmp_path / "sites" / name).mkdir(parents=True)
        (tmp_path / "sites" / name / "omop.duckdb").write_bytes(b"")
    (tmp_path / "network.json").write_text(json.dumps({"people": 4000, "seed": 7}))
    result = runner.invoke(app, ["demo", "--people", "5000", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert (f"error: the demo network in {tmp_path} was generated with --people 4000 --seed 7; it is reused as it is, "
            f"so --people 5000 would be ignored. Pass another --workdir, or remove {tmp_path} to generate it again."
            ) in " ".join(result.output.split())
    # A network from before the options were recorded: any option is refused.
    (tmp_path / "network.json").unlink()
    result = runner.invoke(app, ["demo", "--seed", "3", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "generated with options this version did not record" in " ".join(result.output.split())
