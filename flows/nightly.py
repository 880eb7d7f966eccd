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

import pandas as pd
from prefect import flow, get_run_logger, task

from forewarn.evaluation.evaluate import Evaluation, evaluate_and_explain
from forewarn.evaluation.report import report_context, write_report
from forewarn.evaluation.validation import auroc_on, external_validation
from forewarn.features.featurize import FeatureMatrix, featurize
from forewarn.features.labels import LabelSet, TaskSpec, TemporalSplit, label_dataset, load_task
from forewarn.flows import tracking
from forewarn.flows.study import SiteConfig, Study
from forewarn.models.promotion import decide
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


@task(name="external validation")
def external_task(
    model_site: str, trained: TrainedModels, model_matrix: FeatureMatrix, pull: PullResult, labels: LabelSet, out_dir: Path,
    study: Study,
) -> dict:
    """Ship the model (not rows) to another site, featurize there with the model's columns,
    and bring back aggregates only."""
    table, splits, _ = labels.load()
    columns = pd.read_parquet(model_matrix.columns_path)
    matrix = featurize(pull.events_dir, table, splits, out_dir, study.features, codes_path=pull.codes_path, columns=columns)
    return external_validation(trained, matrix, n_boot=study.evaluation.bootstrap, seed=study.evaluation.seed)


@task(name="publish")
def publish_task(
    site: SiteConfig, study: Study, spec: TaskSpec, pull: PullResult, labels: LabelSet,
    matrix: FeatureMatrix, trained: TrainedModels, evaluation: Evaluation, validations: list[dict],
) -> SiteResult:
    return publish(site, study, spec, pull, labels, matrix, trained, evaluation, validations)


def champion_comparison(site, study, spec, pull, labels, matrix) -> dict | None:
    """The current champion's held-out AUROC on today's held-out rows, or None."""
    dest = site.workdir / "models" / spec.name / "champion"
    version = tracking.champion_inputs(spec.name, site.name, dest)
    if version is None:
        return None
    table, splits, _ = labels.load()
    columns = pd.read_parquet(dest / "columns.parquet")
    champion_matrix = featurize(pull.events_dir, table, splits, site.workdir / "features" / spec.name / "champion", study.features,
                                codes_path=pull.codes_path, columns=columns)
    return {"version": version, "auroc": auroc_on(TrainedModels(dest), champion_matrix)}


def publish(site, study, spec, pull, labels, matrix, trained, evaluation, validations) -> SiteResult:
    """Open the (site, task) MLflow run, apply the promotion rule against the champion,
    register the model, render the report with the decision, and log it all to the run."""
    run_id = tracking.start_site_run(
        experiment=tracking.experiment_name(spec.name), site=site.name,
        run_name=f"{site.name}-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        tags={"task": spec.name, "task_digest": spec.digest(), "validation_design": "internal",
              "code_version": code_version(), "study": study.name},
    )
    shape = json.loads((matrix.dir / "shape.json").read_text())
    digest = data_digest(pull.events_dir)
    record = evaluation.load_metrics()
    held = record["held_out"][PRIMARY]
    champion = champion_comparison(site, study, spec, pull, labels, matrix)
    promotion = decide(held, champion, study.promotion)
    name = tracking.registered_name(spec.name, site.name)
    if promotion["promoted"]:
        decision = f"promoted to champion: {'; '.join(promotion['reasons'])}."
    else:
        decision = f"kept as challenger (champion stays v{promotion['champion_version']}): {'; '.join(promotion['reasons'])}."
    name, version, aliases = tracking.register_model(
        run_id=run_id, task=spec.name, site=site.name, xgb_model_path=trained.xgboost_path, n_features=shape["columns"],
        promote=promotion["promoted"], decision=decision,
    )
    decision = f"{name} v{version} {decision}"
    promotion |= {"decision": decision, "version": version}
    pull_report = json.loads(pull.report_path.read_text()) | {"demo": study.demo}
    quality = json.loads(pull.quality_path.read_text())
    training = json.loads(trained.summary_path.read_text())
    _, _, attrition = labels.load()
    context = report_context(
        site=site.name, task=spec, attrition=attrition, pull_report=pull_report, features_shape=shape,
        feature_config=study.features, training=training, evaluation=evaluation, decision=decision,
        code_version=code_version(), data_digest=digest, quality=quality,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), mlflow_run_id=run_id,
        validations=validations, promotion=promotion,
    )
    report_path = write_report(context, site.workdir / "reports" / spec.name / "report.html")
    metrics = tracking.flat_metrics(record["held_out"], PRIMARY)
    for key in ("calibration_slope", "calibration_in_the_large", "ece"):
        if held.get(key) is not None:
            metrics[f"held_out/{key}"] = float(held[key])
    metrics["train/best_iteration"] = float(training["xgboost"]["best_iteration"])
    metrics["promotion/promoted"] = float(promotion["promoted"])
    params = {
        "task": spec.name, "site": site.name, "gap_days": spec.gap_days, "horizon_days": spec.horizon_days,
        "windows": ",".join(study.features.windows), "aggs": ",".join(study.features.aggs),
        "min_code_subjects": study.features.min_code_subjects, "n_features": shape["columns"],
        "l1_C": training["l1_logistic"]["C"], "bootstrap": study.evaluation.bootstrap, "split_seed": study.split_seed,
        "calibration": training["calibration"]["method"], "scale_pos_weight": training["xgboost"]["scale_pos_weight"],
        **{f"xgb_{k}": v for k, v in training["xgboost"]["params"].items()},
    }
    artifacts = {"report.html": report_path, "metrics.json": evaluation.metrics_path}
    artifacts |= {f"figures/{f.name}": f for f in sorted((evaluation.dir / "figures").glob("*.png"))}
    artifacts["shap/importance.parquet"] = evaluation.explanations.importance_path
    model_inputs = {"xgboost.json": trained.xgboost_path, "calibration.json": trained.calibration_path,
                    "columns.parquet": matrix.columns_path, "l1_logistic.json": trained.l1_path, "age_sex.json": trained.age_sex_path}
    artifacts |= {f"{tracking.MODEL_INPUTS}/{k}": v for k, v in model_inputs.items()}
    note = (
        f"{spec.name} at site {site.name}: XGBoost held-out AUROC {held['auroc']:.3f} "
        f"({held['auroc_ci_low']:.3f}-{held['auroc_ci_high']:.3f}), AUPRC {held['auprc']:.3f}. {decision}"
    )
    tracking.log_records(
        run_id=run_id, params=params, metrics=metrics, artifacts=artifacts,
        dicts={"data/pull_summary.json": tracking.pull_summary(pull_report), "data/quality.json": quality,
               "data/attrition.json": _suppressed(attrition), "validation/promotion.json": promotion,
               "validation/external.json": {"validations": validations},
               "config/study.json": json.loads(study.model_dump_json())},
        note=note,
        tags={"data_digest": digest, "promoted": str(promotion["promoted"]).lower()},
    )
    tracking.log_trials(run_id, training.get("search", {}).get("trials", []))
    for split in ("train", "tuning", "held_out"):
        tracking.log_dataset(run_id, name=f"{site.name}/{spec.name}/{split}", digest=f"{digest}-{split}",
                             source=matrix.dir, context={"train": "training", "tuning": "validation", "held_out": "test"}[split])
    return SiteResult(
        site.name, spec.name, "published", run_id=run_id, experiment=tracking.experiment_name(spec.name), model_name=name,
        version=version, aliases=aliases, decision=decision, report_path=report_path, metrics=metrics,
    )


def validation_metrics(record: dict, prefix: str) -> dict[str, float]:
    out = {}
    for key in ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "brier", "calibration_slope", "calibration_in_the_large"):
        if record.get(key) is not None:
            out[f"{prefix}/{key}"] = float(record[key])
    return out


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
    """Run the whole pipeline once for every site and task of ``study``: internal
    validation per site, external validation of each site's model at the others,
    temporal validation when configured, then the promotion rule and publication."""
    logger = get_run_logger()
    tracking.configure()
    specs = [load_task(t) for t in study.tasks]
    pulls = {site.name: pull_task(site, study.demo) for site in study.sites}
    results = []
    for spec in specs:
        built = {}
        for site in study.sites:
            work = site.workdir
            labels = label_task(pulls[site.name], spec, work, study.split_seed)
            matrix = featurize_task(pulls[site.name], labels, work / "features" / spec.name, study)
            reason = trainability(matrix)
            if reason:
                logger.warning("site %s, task %s skipped: %s", site.name, spec.name, reason)
                results.append(SiteResult(site.name, spec.name, "skipped", reason=reason))
                continue
            trained = train_task(matrix, work / "models" / spec.name, study)
            evaluation = evaluate_task(matrix, trained, labels, work / "evaluation" / spec.name, study, site.name)
            built[site.name] = (site, labels, matrix, trained, evaluation)
        validations = {name: [] for name in built}
        if "external" in study.validation.designs:
            for model_site, (_, _, matrix, trained, _) in built.items():
                for site in study.sites:
                    if site.name == model_site or site.name not in built:
                        continue
                    labels = built[site.name][1]
                    out = site.workdir / "features" / spec.name / f"external-{model_site}"
                    record = external_task(model_site, trained, matrix, pulls[site.name], labels, out, study)
                    validations[model_site].append(log_external(study, spec, model_site, site.name, record))
        if "temporal" in study.validation.designs:
            for site_name, (site, *_rest) in built.items():
                record = temporal_task(site, pulls[site_name], spec, study)
                if record is not None:
                    validations[site_name].append(log_temporal(study, spec, site_name, record))
        for site_name, (site, labels, matrix, trained, evaluation) in built.items():
            result = publish_task(site, study, spec, pulls[site_name], labels, matrix, trained, evaluation, validations[site_name])
            logger.info(
                "site %s, task %s: held-out AUROC %.3f, AUPRC %.3f; %s", site_name, spec.name,
                result.metrics["held_out/auroc"], result.metrics["held_out/auprc"], result.decision,
            )
            results.append(result)
    return results


@task(name="temporal validation")
def temporal_task(site: SiteConfig, pull: PullResult, spec: TaskSpec, study: Study) -> dict | None:
    """Train on prediction times before ``temporal_from`` and test on those after."""
    cutoff = datetime.combine(study.validation.temporal_from, datetime.min.time())
    temporal = spec.model_copy(update={"temporal_split": TemporalSplit(held_out_from=cutoff)})
    work = site.workdir / "temporal"
    labels = label_dataset(pull.events_dir, temporal, work, split_seed=study.split_seed)
    table, splits, _ = labels.load()
    matrix = featurize(pull.events_dir, table, splits, work / "features" / spec.name, study.features, codes_path=pull.codes_path)
    if trainability(matrix):
        return None
    models = study.models.model_copy(update={"search": study.models.search.model_copy(update={"trials": 0})})
    trained = train_models(matrix, work / "models" / spec.name, models)
    held = evaluate_and_explain(matrix, trained, work / "evaluation" / spec.name, study.evaluation, site=site.name,
                                outcomes_path=labels.outcomes_path).load_metrics()["held_out"][PRIMARY]
    return held | {"cutoff": cutoff.date().isoformat()}


def log_temporal(study: Study, spec: TaskSpec, site: str, record: dict) -> dict:
    run_id = tracking.log_run(
        experiment=tracking.experiment_name(spec.name), run_name=f"{site}-temporal-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        tags={"site": site, "task": spec.name, "task_digest": spec.digest(), "validation_design": "temporal",
              "code_version": code_version(), "study": study.name, "temporal_from": record["cutoff"]},
        metrics=validation_metrics(record, "temporal"), dicts={"validation/temporal.json": record},
        note=f"{spec.name} at {site}: trained on prediction times before {record['cutoff']}, tested on those after.",
    )
    return {"design": "temporal", "train_site": site, "eval_site": site, "run_id": run_id,
            **{k: record.get(k) for k in ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "brier", "calibration_slope",
                                          "calibration_in_the_large")},
            "recalibrated": None, "note": f"trained before {record['cutoff']}, tested from then on"}


def log_external(study: Study, spec: TaskSpec, model_site: str, eval_site: str, record: dict) -> dict:
    """One MLflow run per (model site, validating site): aggregates only."""
    shipped, recal = record["as_shipped"], record.get("recalibrated")
    metrics = validation_metrics(shipped, "external") | (validation_metrics(recal, "external_recalibrated") if recal else {})
    run_id = tracking.log_run(
        experiment=tracking.experiment_name(spec.name), run_name=f"{model_site}-model-at-{eval_site}-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        tags={"site": eval_site, "train_site": model_site, "task": spec.name, "task_digest": spec.digest(),
              "validation_design": "external", "code_version": code_version(), "study": study.name},
        metrics=metrics, dicts={"validation/external.json": record},
        note=f"{model_site}'s {spec.name} model evaluated at {eval_site} (held-out rows there; only aggregates returned).",
    )
    return {"design": "external", "train_site": model_site, "eval_site": eval_site, "run_id": run_id,
            **{k: shipped.get(k) for k in ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "brier", "calibration_slope",
                                           "calibration_in_the_large")},
            "recalibrated": {k: recal.get(k) for k in ("auroc", "auprc", "brier", "calibration_slope", "calibration_in_the_large")}
            if recal else None,
            "note": "model shipped to the validating site; metrics on its held-out rows"}
