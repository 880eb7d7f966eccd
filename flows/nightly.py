"""The nightly flow: pull -> label -> featurize -> train -> evaluate/explain -> publish, per site.

Each ``@task`` is a one-line wrapper around a plain, unit-tested function; tasks pass
small frozen dataclasses of paths. Row-level data stays in each site's work folder;
only aggregates (metrics, figures, the report, the model) reach MLflow.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from prefect import flow, get_run_logger, task

from forewarn.evaluation.evaluate import Evaluation, evaluate_and_explain
from forewarn.evaluation.report import report_context, write_report
from forewarn.features.featurize import FeatureMatrix, featurize
from forewarn.features.labels import LabelSet, TaskSpec, label_dataset, load_task
from forewarn.flows import tracking
from forewarn.flows.study import SiteConfig, Study
from forewarn.models.train import PRIMARY, TrainedModels, train_models, trainability
from forewarn.records import deid, privacy
from forewarn.records.pull import PullResult
from forewarn.records.sources import pull_source


@dataclass(frozen=True)
class SiteResult:
    """What one (site, task) run produced: a published model, or why it was skipped."""

    site: str
    task: str
    status: str  # "published" or "skipped"
    reason: str = ""
    run_id: str = ""
    experiment: str = ""
    model_name: str = ""
    version: str = ""
    aliases: tuple[str, ...] = ()
    decision: str = ""
    report_path: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@task(name="pull")
def pull_task(site: SiteConfig, demo: bool) -> PullResult:
    return pull_site(site, demo)


def pull_site(site: SiteConfig, demo: bool) -> PullResult:
    secret = deid.load_secret(site.name, demo=demo, secret_file=site.deid.secret_file)
    config = deid.DeidConfig(secret, max_shift_days=site.deid.max_shift_days)
    return pull_source(
        site.source.format, site.source.location, site.workdir / "pull", site=site.name, config=config,
        max_bad_fraction=site.max_bad_fraction, db_schema=site.source.db_schema,
    )


@task(name="label")
def label_task(pull: PullResult, spec: TaskSpec, out_dir: Path, split_seed: int) -> LabelSet:
    return label_dataset(pull.events_dir, spec, out_dir, split_seed=split_seed)


@task(name="featurize")
def featurize_task(pull: PullResult, labels: LabelSet, out_dir: Path, study: Study) -> FeatureMatrix:
    table, splits, _ = labels.load()
    return featurize(pull.events_dir, table, splits, out_dir, study.features, codes_path=pull.codes_path)


@task(name="train")
def train_task(matrix: FeatureMatrix, out_dir: Path, study: Study) -> TrainedModels:
    return train_models(matrix, out_dir, study.models)


@task(name="evaluate")
def evaluate_task(
    matrix: FeatureMatrix, trained: TrainedModels, labels: LabelSet, out_dir: Path, study: Study, site: str
) -> Evaluation:
    return evaluate_and_explain(matrix, trained, out_dir, study.evaluation, site=site, outcomes_path=labels.outcomes_path)


@task(name="publish")
def publish_task(
    site: SiteConfig, study: Study, spec: TaskSpec, pull: PullResult, labels: LabelSet,
    matrix: FeatureMatrix, trained: TrainedModels, evaluation: Evaluation,
) -> SiteResult:
    return publish(site, study, spec, pull, labels, matrix, trained, evaluation)


def publish(site, study, spec, pull, labels, matrix, trained, evaluation) -> SiteResult:
    """Open the (site, task) MLflow run, register the model, render the report with the
    decision, and log it all to the run."""
    run_id = tracking.start_site_run(
        experiment=tracking.experiment_name(spec.name), site=site.name,
        run_name=f"{site.name}-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        tags={"task": spec.name, "task_digest": spec.digest(), "validation_design": "internal",
              "code_version": code_version(), "study": study.name},
    )
    shape = json.loads((matrix.dir / "shape.json").read_text())
    digest = data_digest(pull.events_dir)
    name, version, aliases, decision = tracking.register_model(
        run_id=run_id, task=spec.name, site=site.name, xgb_model_path=trained.xgboost_path, n_features=shape["columns"]
    )
    pull_report = json.loads(pull.report_path.read_text()) | {"demo": study.demo}
    quality = json.loads(pull.quality_path.read_text())
    training = json.loads(trained.summary_path.read_text())
    _, _, attrition = labels.load()
    context = report_context(
        site=site.name, task=spec, attrition=attrition, pull_report=pull_report, features_shape=shape,
        feature_config=study.features, training=training, evaluation=evaluation, decision=decision,
        code_version=code_version(), data_digest=digest, quality=quality,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), mlflow_run_id=run_id,
    )
    report_path = write_report(context, site.workdir / "reports" / spec.name / "report.html")
    record = evaluation.load_metrics()
    metrics = tracking.flat_metrics(record["held_out"], PRIMARY)
    metrics["train/best_iteration"] = float(training["xgboost"]["best_iteration"])
    params = {
        "task": spec.name, "site": site.name, "gap_days": spec.gap_days, "horizon_days": spec.horizon_days,
        "windows": ",".join(study.features.windows), "aggs": ",".join(study.features.aggs),
        "min_code_subjects": study.features.min_code_subjects, "n_features": shape["columns"],
        "l1_C": training["l1_logistic"]["C"], "bootstrap": study.evaluation.bootstrap, "split_seed": study.split_seed,
        **{f"xgb_{k}": v for k, v in study.models.xgboost.model_dump().items()},
    }
    artifacts = {"report.html": report_path, "metrics.json": evaluation.metrics_path}
    artifacts |= {f"figures/{f.name}": f for f in sorted((evaluation.dir / "figures").glob("*.png"))}
    artifacts["shap/importance.parquet"] = evaluation.explanations.importance_path
    held = record["held_out"][PRIMARY]
    note = (
        f"{spec.name} at site {site.name}: XGBoost held-out AUROC {held['auroc']:.3f} "
        f"({held['auroc_ci_low']:.3f}-{held['auroc_ci_high']:.3f}), AUPRC {held['auprc']:.3f}. {decision}"
    )
    tracking.log_records(
        run_id=run_id, params=params, metrics=metrics, artifacts=artifacts,
        dicts={"data/pull_summary.json": tracking.pull_summary(pull_report), "data/quality.json": quality,
               "data/attrition.json": _suppressed(attrition),
               "config/study.json": json.loads(study.model_dump_json())},
        note=note,
        tags={"data_digest": digest},
    )
    return SiteResult(
        site.name, spec.name, "published", run_id=run_id, experiment=tracking.experiment_name(spec.name), model_name=name,
        version=version, aliases=aliases, decision=decision, report_path=report_path, metrics=metrics,
    )


def _suppressed(attrition: dict) -> dict:
    return {k: {kk: privacy.suppress(vv) for kk, vv in v.items()} for k, v in attrition.items()}


def data_digest(events_dir: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(Path(events_dir).glob("*.parquet")):
        h.update(path.name.encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def code_version() -> str:
    version = metadata.version("forewarn")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


@flow(name="forewarn-nightly", log_prints=False)
def nightly(study: Study) -> list[SiteResult]:
    """Run the whole pipeline once for every site and task of ``study``."""
    logger = get_run_logger()
    tracking.configure()
    specs = [load_task(t) for t in study.tasks]
    results = []
    for site in study.sites:
        work = site.workdir
        pull = pull_task(site, study.demo)
        for spec in specs:
            labels = label_task(pull, spec, work, study.split_seed)
            matrix = featurize_task(pull, labels, work / "features" / spec.name, study)
            reason = trainability(matrix)
            if reason:
                logger.warning("site %s, task %s skipped: %s", site.name, spec.name, reason)
                results.append(SiteResult(site.name, spec.name, "skipped", reason=reason))
                continue
            trained = train_task(matrix, work / "models" / spec.name, study)
            evaluation = evaluate_task(matrix, trained, labels, work / "evaluation" / spec.name, study, site.name)
            result = publish_task(site, study, spec, pull, labels, matrix, trained, evaluation)
            logger.info(
                "site %s, task %s: held-out AUROC %.3f, AUPRC %.3f; %s", site.name, spec.name,
                result.metrics["held_out/auroc"], result.metrics["held_out/auprc"], result.decision,
            )
            results.append(result)
    return results
