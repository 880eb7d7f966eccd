"""The Prefect markdown artifact of a nightly run: one table a scheduler reads at a glance.

Per (site, task): status, held-out AUROC with its CI, AUPRC, calibration slope, the
promotion decision, the drift policy's action with max PSI, and links to the MLflow run
and the report. Aggregates only (the same numbers MLflow holds).
"""

from __future__ import annotations

import re
from pathlib import Path

from forewarn.flows import tracking


def artifact_key(study_name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", f"forewarn-{study_name}-nightly".lower()).strip("-")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    return "" if value is None else f"{value:.3f}"


def run_link(result) -> str:
    if not result.run_id:
        return ""
    url = tracking.run_url(result.experiment or tracking.experiment_name(result.task), result.run_id)
    return f"[{result.run_id[:8]}]({url})" if url else result.run_id[:8]


def _stable_report(result, workdirs: dict[str, Path]) -> Path:
    """The latest report's stable copy (``<workdir>/reports/<task>/report.html``), which
    outlives the stage folder the run wrote it in (pruned after ``keep_runs`` runs)."""
    if result.status == "validated":  # a registered model's validation report: its own stable copy
        stable = workdirs[result.site] / "reports" / result.task / f"{result.model_name}-v{result.version}.html"
        return stable if stable.is_file() else result.report_path
    stable = workdirs[result.site] / "reports" / result.task / "report.html" if result.site in workdirs else None
    return stable if stable is not None and stable.is_file() else result.report_path


def summary_markdown(study, results) -> str:
    """The artifact's text (also used by tests and the CLI)."""
    failed = [r for r in results if r.status == "failed" or getattr(r, "worklist_failed", False)]
    workdirs = {s.name: Path(s.workdir) for s in study.sites}
    lines = [f"# Forewarn nightly: study `{study.name}`", ""]
    lines.append(
        f"{sum(r.status == 'published' for r in results)} published, "
        + (f"{sum(r.status == 'validated' for r in results)} validations of registered models, "
           if any(r.status in ("validated", "not validated") for r in results) else "")
        + f"{sum(r.status == 'skipped' for r in results)} skipped, "
        f"{sum(r.status == 'held' for r in results)} held, "
        f"{len(failed)} failed; {sum(getattr(r, 'cached', False) for r in results)} unchanged since the last run."
    )
    lines += ["", "| site | task | status | AUROC [95% CI] | AUPRC | calibration slope | drift | decision | MLflow | report |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = r.metrics
        auroc = tracking.auroc_text(m) if r.status in ("published", "validated") else ""
        decision = (r.drift or {}).get("decision") or {}
        drift = decision.get("action", "")
        if m.get("drift/max_psi") is not None:
            drift += f" (max PSI {m['drift/max_psi']:.3f})"
        if drift and decision.get("drifted"):
            drift = f"**{drift}**"
        report = f"[report]({_stable_report(r, workdirs).resolve().as_uri()})" if r.report_path else ""
        text = r.decision or r.reason
        lines.append("| " + " | ".join(_cell(c) for c in (
            r.site, r.task, r.status + (" (cached)" if getattr(r, "cached", False) else ""), auroc,
            _num(m, "held_out/auprc"), _num(m, "held_out/calibration_slope"), drift, text, run_link(r), report)) + " |")
    if failed:
        lines += ["", "## Failures", ""]
        lines += [f"- **{r.site} / {r.task}**: {_cell(r.reason if r.status == 'failed' else r.worklist)}" for r in failed]
    alerts = [r for r in results if ((r.drift or {}).get("decision") or {}).get("drifted")]
    if alerts:
        lines += ["", "## Drift", ""]
        for r in alerts:
            d = r.drift["decision"]
            lines.append(f"- **{r.site} / {r.task}**: {d['action']}: {_cell('; '.join(d['reasons']))}")
    lines += ["", f"MLflow store: `{tracking.redacted_uri()}`"]
    return "\n".join(lines) + "\n"


def publish_summary(study, results) -> str | None:
    """Create the markdown artifact in the current flow run; returns its id."""
    from prefect.artifacts import create_markdown_artifact

    artifact_id = create_markdown_artifact(
        markdown=summary_markdown(study, results), key=artifact_key(study.name),
        description=f"Forewarn nightly summary for study {study.name}",
    )
    return str(artifact_id) if artifact_id else None
