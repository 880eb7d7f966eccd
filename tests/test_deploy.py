"""Scheduling: the prefect.yaml deployments load, their parameters validate against the
flow, and an invalid study fails before any work with the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_prefect_yaml_deployments_point_at_the_flow_with_valid_parameters(monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(ROOT)  # entrypoints are relative to the project root, as `prefect deploy` reads them
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert [d["name"] for d in config["deployments"]] == ["demo-nightly"]
    for deployment in config["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        assert flow.name == "forewarn-nightly-from-file"
        assert flow.validate_parameters(deployment["parameters"]) == {"study_file": "forewarn-demo/study.yaml"}
        (schedule,) = deployment["schedules"]
        assert len(schedule["cron"].split()) == 5 and schedule["timezone"] == "UTC"
        assert deployment["work_pool"]["name"] == "forewarn"
        assert deployment["concurrency_limit"] == 1


def test_an_invalid_study_file_fails_before_any_work_naming_the_key(tmp_path):
    from forewarn.flows.nightly import nightly_from_file

    study = tmp_path / "study.yaml"
    study.write_text("name: s\ntasks: [t2d_2y]\nsites: [{name: a, source: {location: x.duckdb}}]\nexecutor: {kind: dask}\n")
    with pytest.raises(ValueError, match=r"executor\.scheduler_address") as err:
        nightly_from_file.fn(str(study))
    assert "tcp://HOST:8786" in str(err.value)
    assert not (tmp_path / "sites").exists()  # nothing was started


def test_flow_parameters_are_validated_as_the_study_model():
    from forewarn.flows.nightly import nightly

    good = {"name": "s", "tasks": ["t2d_2y"], "sites": [{"name": "a", "source": {"location": "/x.duckdb"}}]}
    assert nightly.validate_parameters({"study": good})["study"].sites[0].name == "a"
    with pytest.raises(Exception, match="drift") as err:
        nightly.validate_parameters({"study": good | {"drift": {"on_drift": "panic"}}})
    assert "on_drift" in str(err.value)
