"""Faults in a nightly run, with real components: a site's source locked by its writer
(a transient error, retried with backoff until the lock goes), and a site whose source is
not a database at all (it fails; the other site's work is kept and the run says which site
failed and why)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from helpers import flow_workdir

pytestmark = pytest.mark.slow


def test_is_transient_separates_retryable_errors_from_bad_data():
    import duckdb
    import sqlalchemy.exc

    from forewarn.flows.nightly import is_transient
    from forewarn.records.pull import PullFailed

    lock = duckdb.IOException('IO Error: Could not set lock on file "x.duckdb": Conflicting lock is held')
    assert is_transient(lock)
    assert is_transient(sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("refused")))
    assert is_transient(ConnectionResetError("reset by peer"))
    assert not is_transient(PullFailed("person: 40% of rows quarantined"))
    assert not is_transient(FileNotFoundError("no such file"))
    assert not is_transient(ValueError("bad column"))
    assert not is_transient(duckdb.IOException("IO Error: The file is not a valid DuckDB database file!"))
    wrapped = RuntimeError("pull failed")
    wrapped.__cause__ = ConnectionResetError("reset")
    assert is_transient(wrapped)


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory, demo_network, prefect_server):
    work = tmp_path_factory.mktemp("faults")
    locked = work / "academic.duckdb"
    shutil.copyfile(demo_network["academic"], locked)
    broken = work / "community.duckdb"
    broken.write_text("this is not a DuckDB database\n")
    writer = None
    with flow_workdir(work, tmp_path_factory.mktemp("prefect-home-faults")):
        from forewarn.flows.nightly import run_nightly
        from forewarn.flows.study import parse_study

        study = parse_study({
            "name": "faults", "demo": True, "tasks": ["ckd3_2y"],
            "sites": [{"name": "academic", "source": {"location": str(locked)}},
                      {"name": "community", "source": {"location": str(broken)}}],
            "evaluation": {"bootstrap": 20, "shap_rows": 100}, "models": {"n_jobs": 1, "search": {"trials": 0}, "blend": "tuned"},
            "validation": {"designs": ["internal", "external"]},
            "retries": {"attempts": 4, "delays_seconds": [1, 2, 3]},
            # faults, not calibration, are under test: the small network's first model is champion
            # (its held-out CKD slope rests on a few dozen events)
            "promotion": {"slope_low": 0.2, "slope_high": 5.0},
        }, base_dir=work)
        try:
            # The site's own writer holds the database for 4 seconds.
            writer = subprocess.Popen(
                [sys.executable, "-c",
                 f"import duckdb, time; c = duckdb.connect({str(locked)!r}); print('locked', flush=True); time.sleep(4)"],
                stdout=subprocess.PIPE, text=True,
            )
            assert writer.stdout.readline().strip() == "locked"
            state, results = run_nightly(study)
            task_runs = _pull_runs(state)
            artifact = _artifact("forewarn-faults-nightly")
            yield {"state": state, "results": results, "task_runs": task_runs, "artifact": artifact}
        finally:
            if writer is not None:
                writer.kill()
                writer.communicate()  # reaps it and closes its pipe


def _pull_runs(state) -> dict[str, tuple[int, str]]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    return {r.name: (r.run_count, r.state.type.value) for r in runs if r.name.startswith("pull")}


def _artifact(key: str) -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return artifact.data


def test_locked_source_is_retried_and_pulled(faulty_run):
    runs = sorted(faulty_run["task_runs"].values())
    # One pull was tried more than once and completed; the broken one failed at once (not transient).
    assert runs[0] == (1, "FAILED")
    assert runs[1][0] >= 2 and runs[1][1] == "COMPLETED"


def test_one_site_failing_keeps_the_other_sites_work(faulty_run):
    state, results = faulty_run["state"], faulty_run["results"]
    assert state.is_failed()
    assert "community/ckd3_2y: pull failed" in state.message and "1 of 2" in state.message
    by_site = {r.site: r for r in results}
    assert by_site["academic"].status == "published"
    assert by_site["academic"].aliases == ("challenger", "champion")
    assert by_site["community"].status == "failed"
    assert "pull failed" in by_site["community"].reason and "IOException" in by_site["community"].reason


def test_the_artifact_lists_metrics_decision_and_the_failure(faulty_run):
    text = faulty_run["artifact"]
    academic = next(line for line in text.splitlines() if line.startswith("| academic |"))
    held = faulty_run["results"][0] if faulty_run["results"][0].site == "academic" else faulty_run["results"][1]
    from forewarn.flows.tracking import auroc_text

    # The AUROC with its interval, or (1..10 held-out events at this size) why it is withheld.
    assert auroc_text(held.metrics) in academic
    assert (f"{held.metrics['held_out/auroc']:.3f} [" in academic if "held_out/auroc" in held.metrics
            else "withheld (fewer than 11 events or non-events)" in academic)
    assert "promoted to champion" in academic and "/#/experiments/" in academic and "[report](file://" in academic
    # the stable copy of the latest report, not the stage folder that a later run prunes
    link = academic.split("[report](")[1].split(")")[0]
    assert link.endswith("/reports/ckd3_2y/report.html") and "/stages/" not in link
    assert "## Failures" in text and "**community / ckd3_2y**: pull failed" in text
