"""Caching and resume, with real processes: ``forewarn run`` is killed with SIGKILL at
several stages and started again, and must end with the same stage outputs as an
uninterrupted run; a rerun on unchanged data recomputes nothing and logs nothing new.

The child processes share one Prefect server (the test session's, ``prefect_server``) so
that each does not start its own; MLflow is a SQLite store in each run's folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

# Each kill happens when this line appears on the child's stderr: the stage has started
# computing (or, for publish, has opened its MLflow run) and has not finished.
KILL_AT = (
    "features-t2d_2y: computing",
    "train-t2d_2y: computing",
    "mlflow-network-publish-t2d_2y: computing",
    "external-t2d_2y-academic: computing",
    "MLflow run",
)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory, prefect_server):
    """The children's Prefect settings: this process's test server, a home of their own."""
    return {"PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home"))}


def write_study(folder: Path, network: dict[str, Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    study = {
        "name": "resume",
        "demo": True,
        "tasks": ["t2d_2y"],
        "sites": [{"name": n, "source": {"location": str(p)}} for n, p in network.items()],
        "evaluation": {"bootstrap": 20, "shap_rows": 100},
        "models": {"n_jobs": 1, "search": {"trials": 0}, "blend": "tuned"},  # blend weight on the tuning rows: the cross-fitted one is not under test here (time)
        "validation": {"designs": ["internal", "external", "network"]},
        "retries": {"attempts": 0},
        # resuming, not calibration, is under test: each site's first model of this small network is champion
        "promotion": {"slope_low": 0.2, "slope_high": 5.0},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def forewarn_run(study: Path, env: dict, *, kill_at: str | None = None) -> tuple[int, str]:
    """``forewarn run STUDY`` in ``study``'s folder; SIGKILL when ``kill_at`` is printed."""
    child_env = {**os.environ, **env, "PREFECT_LOGGING_LEVEL": "WARNING"}
    child_env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "forewarn.flows.cli", "run", str(study)], cwd=study.parent, env=child_env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if kill_at and kill_at in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    code = proc.wait(timeout=600)
    return code, "".join(lines)


def stage_digests(study: Path) -> dict[str, str]:
    """The content digest of every finished stage but publication (whose report carries
    the time and the MLflow run id), by stage name and site."""
    out = {}
    for marker in sorted((study.parent / "sites").glob("*/work/stages/*/*/.stage.json")):
        record = json.loads(marker.read_text())
        if record["stage"].startswith(("publish-", "mlflow-")):
            continue
        site = marker.parents[4].name
        assert (site, record["stage"]) not in out, f"two finished {record['stage']} stages at {site}"
        out[(site, record["stage"])] = record["digest"]
    return out


def mlflow_state(study: Path) -> dict:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{study.parent / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    versions = client.search_model_versions("name LIKE 'forewarn-%'")
    return {
        # a registration run has no validation design (None, sorted first)
        "complete": sorted(((r.data.tags.get("forewarn.site"), r.data.tags.get("forewarn.validation_design"))
                            for r in runs if r.data.tags.get("forewarn.complete") == "true"),
                           key=lambda run: tuple((x is not None, x or "") for x in run)),
        "killed": sum(r.info.status == "KILLED" for r in runs),
        "unfinished": sum(r.info.status == "RUNNING" for r in runs),
        "versions": sorted((v.name, v.run_id in {r.info.run_id for r in runs if r.info.status == "FINISHED"}) for v in versions),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_network, prefect_api):
    root = tmp_path_factory.mktemp("resume")
    reference = write_study(root / "reference", demo_network)
    code, out = forewarn_run(reference, prefect_api)
    assert code == 0, out
    killed = write_study(root / "killed", demo_network)
    outputs = []
    for marker in KILL_AT:
        code, out = forewarn_run(killed, prefect_api, kill_at=marker)
        assert code == -signal.SIGKILL, f"the run ended ({code}) before printing {marker!r}:\n{out}"
        outputs.append(out)
    code, out = forewarn_run(killed, prefect_api)
    assert code == 0, out
    started = time.perf_counter()
    code, again = forewarn_run(killed, prefect_api)
    rerun_seconds = time.perf_counter() - started
    assert code == 0, again
    finished = {name: {"digests": stage_digests(study), "mlflow": mlflow_state(study)}
                for name, study in (("reference", reference), ("killed", killed))}
    # A kill after publication tagged its MLflow run complete but before the stage was
    # marked done: as if, the publication and MLflow logging stages are removed (the sites'
    # publications, the network's registration, and the external and network validation
    # runs); the next run must reuse the runs.
    stages = killed.parent / "sites"
    for marker in [*stages.glob("*/work/stages/publish-t2d_2y/*/.stage.json"),
                   *stages.glob("*/work/stages/mlflow-network-publish-t2d_2y/*/.stage.json"),
                   *stages.glob("*/work/stages/mlflow-external-t2d_2y-*/*/.stage.json"),
                   *stages.glob("*/work/stages/mlflow-network-t2d_2y/*/.stage.json")]:
        shutil.rmtree(marker.parent)
    code, recovered = forewarn_run(killed, prefect_api)
    assert code == 0, recovered
    finished["recovered"] = {"mlflow": mlflow_state(killed)}
    # New splits make a new candidate on the same data: the drift check finds nothing and
    # a policy of skipping stable nights keeps the champion without training.
    study = yaml.safe_load(killed.read_text()) | {"split_seed": 1, "drift": {"on_stable": "skip"}}
    killed.write_text(yaml.safe_dump(study))
    code, skipped = forewarn_run(killed, prefect_api)
    assert code == 0, skipped
    finished["skipped"] = {"mlflow": mlflow_state(killed)}
    # The network's model on the first splits again, another setting so that it is a new
    # candidate, on stable data.
    killed.write_text(yaml.safe_dump(study | {"split_seed": 0, "validation": study["validation"] | {"rounds_per_visit": 5}}))
    code, network_skipped = forewarn_run(killed, prefect_api)
    assert code == 0, network_skipped
    return {"reference": reference, "killed": killed, "killed_outputs": outputs, "resumed": out, "rerun": again,
            "recovered": recovered,
            "rerun_seconds": rerun_seconds, "skipped": skipped, "network_skipped": network_skipped, "finished": finished}


def test_killed_runs_resume_to_the_same_stage_outputs(runs):
    reference, resumed = runs["finished"]["reference"]["digests"], runs["finished"]["killed"]["digests"]
    stages = {name for _, name in reference}
    assert stages == {"pull", "label-t2d_2y", "features-t2d_2y", "train-t2d_2y", "evaluate-t2d_2y",
                      "external-t2d_2y-academic", "external-t2d_2y-community",
                      "network-features-t2d_2y", "network-model-t2d_2y", "network-t2d_2y"}
    assert resumed == reference
    # The run killed at the network's registration trained its model: the sites' processes
    # started once, for the check and the training together.
    trained = runs["killed_outputs"][KILL_AT.index("mlflow-network-publish-t2d_2y: computing")]
    assert "network-model-t2d_2y: computing" in trained
    assert trained.count("network: a process of its own answers for each site (academic, community)") == 1
    # Each kill left work the next run reused: the last run computed no pull.
    assert "pull: computing" not in runs["resumed"]
    assert "pull: cached" in runs["resumed"] or "pull: cached" in runs["killed_outputs"][-1]


def test_killed_publication_leaves_one_complete_run_and_model_version_per_site(runs):
    state = runs["finished"]["killed"]["mlflow"]
    reference = runs["finished"]["reference"]["mlflow"]
    assert state["complete"] == reference["complete"] == [
        ("academic", "external"), ("academic", "internal"), ("academic", "network"),
        ("community", "external"), ("community", "internal"), ("community", "network"), ("network", None)]
    assert state["unfinished"] == 0
    assert state["killed"] >= 1  # the run opened before the last kill
    assert state["versions"] == reference["versions"] == [
        ("forewarn-t2d_2y-academic", True), ("forewarn-t2d_2y-community", True), ("forewarn-t2d_2y-network", True)]


def test_the_summary_names_the_networks_model(runs):
    # v1, or v2 where the kill fell after its registration (a deleted version's number is not reused).
    line = [x for x in runs["rerun"].splitlines() if x.startswith("   network")]
    assert re.fullmatch(r"   network  t2d_2y {16}model forewarn-t2d_2y-network v[12] \(champion\), trained across the "
                        r"sites; its report at each site: reports/t2d_2y/network-report.html", line[0]), line


def test_a_publication_completed_before_its_stage_was_marked_is_reused(runs):
    # Two site publications, the network's registration, two external and two network runs.
    assert runs["recovered"].count("was completed before the stage was marked done; reusing it") == 7
    assert runs["finished"]["recovered"]["mlflow"] == runs["finished"]["killed"]["mlflow"]  # no new run nor version


def test_rerun_on_unchanged_data_recomputes_and_logs_nothing(runs):
    assert ": computing" not in runs["rerun"]
    # the network's model is reused without asking the sites again: no site process starts
    assert "network: a process of its own answers for each site" not in runs["rerun"]
    assert runs["rerun"].count("unchanged since an earlier night (same data and settings): its report and decision stand") == 2
    assert runs["finished"]["killed"]["mlflow"]["complete"].count(("academic", "internal")) == 1


def network_checked_on_stable_splits(out: str) -> bool:
    """Whether a night's output says the drift policy kept the network's champion."""
    return "no network model: the drift policy kept the network's champion" in out


def test_a_stable_night_is_skipped_by_the_drift_policy(runs):
    out = runs["skipped"]
    assert out.count("skipped: drift policy:") == 2
    assert "train-t2d_2y: computing" not in out and "champion-features-t2d_2y: computing" in out
    # No network model is trained: either a site can tune it on these splits, and the network's
    # champion is checked the same way and kept, or none can, and the night says so.
    assert (network_checked_on_stable_splits(out)
            or "no network model: no site of ['academic', 'community']" in out)
    assert "network-model-t2d_2y: computing" not in out
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{runs['killed'].parent / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("forewarn/t2d_2y")
    drift_runs = client.search_runs([exp.experiment_id], filter_string="tags.`forewarn.validation_design` = 'drift' AND "
                                                                       "tags.`forewarn.site` != 'network'")
    assert sorted(r.data.tags["forewarn.site"] for r in drift_runs) == ["academic", "community"]
    for run in drift_runs:
        assert run.data.tags["forewarn.drift_action"] == "skip"
        assert run.data.metrics["drift/detected"] == 0.0 and run.data.metrics["drift/max_psi"] < 0.25
    # No model was registered that night: each site still has one version, its champion.
    assert runs["finished"]["skipped"]["mlflow"]["versions"] == runs["finished"]["killed"]["mlflow"]["versions"]


def test_stage_folders_hold_no_partial_leftovers(runs):
    stages = runs["killed"].parent / "sites"
    assert not list(stages.glob("*/work/stages/*/*.partial-*"))


def test_a_stable_night_skips_the_networks_model_too(runs):
    """Each site re-scores the network's champion on its rows and finds its data stable
    against its own part of the champion's profile: under ``on_stable: skip`` no network
    model is trained and the champion stays."""
    out = runs["network_skipped"]
    network = [line for line in out.splitlines() if "network" in line]
    assert out.count("network-champion-features-t2d_2y: computing") == 2, network
    assert "network-model-t2d_2y: computing" not in out
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{runs['killed'].parent / 'mlruns' / 'mlflow.db'}")
    (version,) = client.search_model_versions("name = 'forewarn-t2d_2y-network'")  # none registered that night
    assert str(client.get_model_version_by_alias("forewarn-t2d_2y-network", "champion").version) == str(version.version)
    assert (f"no network model: the drift policy kept the network's champion v{version.version} and trained no challenger"
            in out), network
    # The check is logged as a site's skipped night is: a drift run, for the site "network",
    # tonight's and, where a site could tune the network's model on split seed 1, that night's.
    exp = client.get_experiment_by_name("forewarn/t2d_2y")
    checks = client.search_runs([exp.experiment_id], filter_string="tags.`forewarn.validation_design` = 'drift' AND "
                                                                   "tags.`forewarn.site` = 'network'",
                                order_by=["attributes.start_time DESC"])
    assert len(checks) == 1 + network_checked_on_stable_splits(runs["skipped"])
    run = checks[0]
    assert run.data.tags["forewarn.drift_action"] == "skip" and run.data.metrics["drift/detected"] == 0.0
    drift = json.loads(Path(client.download_artifacts(run.info.run_id, "validation/drift.json")).read_text())
    assert sorted(drift["sites"]) == ["academic", "community"] and drift["decision"]["action"] == "skip"
    assert all(d["compare"]["max_psi"] < 0.25 for d in drift["sites"].values())


def test_the_same_trees_are_registered_once(runs):
    """The last night trains the sites' models on the first night's features again (its
    champions' trees) while its validations changed (no network model tonight): each site
    logs a run with the new report, and it refers to champion v1 instead of registering
    the same trees as a new version."""
    out = runs["network_skipped"]
    assert "train-t2d_2y: computing" not in out
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{runs['killed'].parent / 'mlruns' / 'mlflow.db'}")
    for site in ("academic", "community"):
        name = f"forewarn-t2d_2y-{site}"
        (version,) = client.search_model_versions(f"name = '{name}'")
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.version == version.version
        exp = client.get_experiment_by_name("forewarn/t2d_2y")
        published = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], filter_string=(
            f"tags.`forewarn.validation_design` = 'internal' AND tags.`forewarn.site` = '{site}' AND "
            "tags.`forewarn.complete` = 'true'"))
        assert len(published) == 2  # the first night's and the last night's
        first, last = published
        assert first.info.run_id == version.run_id
        assert last.data.tags["forewarn.registered_version"] == str(version.version)
        assert last.data.tags["forewarn.train_key"] == first.data.tags["forewarn.train_key"]
        assert last.data.tags["forewarn.decision"].startswith(
            f"{name} v{version.version} the champion, unchanged: this model is champion v{version.version} itself")
        assert last.data.metrics["promotion/promoted"] == 0.0
        promotion = json.loads(Path(client.download_artifacts(last.info.run_id, "validation/promotion.json")).read_text())
        assert promotion["unchanged"] is True and promotion["version"] == str(version.version)
        report = Path(client.download_artifacts(last.info.run_id, "report.html")).read_text()
        assert f"Unchanged: this model is the champion (v{version.version}) itself." in report
        assert "Not promoted" not in report

