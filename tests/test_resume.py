"""Caching and resume, with real processes: ``forewarn run`` is killed with SIGKILL at
several stages and started again, and must end with the same stage outputs as an
uninterrupted run; a rerun on unchanged data recomputes nothing and logs nothing new.

The child processes share one Prefect server (the test harness's) so that each does not
start its own; MLflow is a SQLite store in each run's folder.
"""

from __future__ import annotations

import json
import os
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
    "features-ckd3_2y: computing",
    "train-ckd3_2y: computing",
    "external-ckd3_2y-academic: computing",
    "MLflow run",
)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    saved = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    try:
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=180):
            yield {"PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(home)}
    finally:
        if saved is None:
            os.environ.pop("PREFECT_HOME", None)
        else:
            os.environ["PREFECT_HOME"] = saved


def write_study(folder: Path, network: dict[str, Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    study = {
        "name": "resume",
        "demo": True,
        "tasks": ["ckd3_2y"],
        "sites": [{"name": n, "source": {"location": str(p)}} for n, p in network.items()],
        "evaluation": {"bootstrap": 20, "shap_rows": 100},
        "models": {"n_jobs": 1, "search": {"trials": 0}},
        "validation": {"designs": ["internal", "external"]},
        "retries": {"attempts": 0},
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
        "complete": sorted((r.data.tags.get("forewarn.site"), r.data.tags.get("forewarn.validation_design"))
                           for r in runs if r.data.tags.get("forewarn.complete") == "true"),
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
    # marked done: as if, the publish stages are removed; the next run must reuse the runs.
    for marker in (killed.parent / "sites").glob("*/work/stages/publish-ckd3_2y/*/.stage.json"):
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
    return {"reference": reference, "killed": killed, "killed_outputs": outputs, "resumed": out, "rerun": again,
            "recovered": recovered,
            "rerun_seconds": rerun_seconds, "skipped": skipped, "finished": finished}


def test_killed_runs_resume_to_the_same_stage_outputs(runs):
    reference, resumed = runs["finished"]["reference"]["digests"], runs["finished"]["killed"]["digests"]
    stages = {name for _, name in reference}
    assert stages == {"pull", "label-ckd3_2y", "features-ckd3_2y", "train-ckd3_2y", "evaluate-ckd3_2y",
                      "external-ckd3_2y-academic", "external-ckd3_2y-community"}
    assert resumed == reference
    # Each kill left work the next run reused: the last run computed no pull.
    assert "pull: computing" not in runs["resumed"]
    assert "pull: cached" in runs["resumed"] or "pull: cached" in runs["killed_outputs"][-1]


def test_killed_publication_leaves_one_complete_run_and_model_version_per_site(runs):
    state = runs["finished"]["killed"]["mlflow"]
    reference = runs["finished"]["reference"]["mlflow"]
    assert state["complete"] == reference["complete"] == [
        ("academic", "external"), ("academic", "internal"), ("community", "external"), ("community", "internal")]
    assert state["unfinished"] == 0
    assert state["killed"] >= 1  # the run opened before the last kill
    assert state["versions"] == reference["versions"] == [("forewarn-ckd3_2y-academic", True), ("forewarn-ckd3_2y-community", True)]


def test_a_publication_completed_before_its_stage_was_marked_is_reused(runs):
    assert runs["recovered"].count("was completed before the stage was marked done; reusing it") == 2
    assert runs["finished"]["recovered"]["mlflow"] == runs["finished"]["killed"]["mlflow"]  # no new run nor version


def test_rerun_on_unchanged_data_recomputes_and_logs_nothing(runs):
    assert ": computing" not in runs["rerun"]
    assert runs["rerun"].count("[unchanged: cached]") == 2
    assert runs["finished"]["killed"]["mlflow"]["complete"].count(("academic", "internal")) == 1


def test_a_stable_night_is_skipped_by_the_drift_policy(runs):
    out = runs["skipped"]
    assert out.count("skipped: drift policy:") == 2
    assert "train-ckd3_2y: computing" not in out and "champion-features-ckd3_2y: computing" in out
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{runs['killed'].parent / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("forewarn/ckd3_2y")
    drift_runs = client.search_runs([exp.experiment_id], filter_string="tags.`forewarn.validation_design` = 'drift'")
    assert sorted(r.data.tags["forewarn.site"] for r in drift_runs) == ["academic", "community"]
    for run in drift_runs:
        assert run.data.tags["forewarn.drift_action"] == "skip"
        assert run.data.metrics["drift/detected"] == 0.0 and run.data.metrics["drift/max_psi"] < 0.25
    # No model was registered that night: each site still has one version, its champion.
    for name in ("forewarn-ckd3_2y-academic", "forewarn-ckd3_2y-community"):
        (version,) = client.search_model_versions(f"name = '{name}'")
        assert client.get_model_version_by_alias(name, "champion").version == version.version


def test_stage_folders_hold_no_partial_leftovers(runs):
    stages = runs["killed"].parent / "sites"
    assert not list(stages.glob("*/work/stages/*/*.partial-*"))
