"""The one MLflow adapter: it turns the plain records of a site's run into an MLflow run.

Tracking URI: ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<cwd>/mlruns/mlflow.db``
with artifacts under ``<cwd>/mlruns/artifacts``, resolved to absolute paths once.
Every run carries the same metric names so the compare view lines runs up.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forewarn.records import privacy

EXPERIMENT_PREFIX = "forewarn"
TAG = "forewarn"


def default_store(cwd: Path | None = None) -> tuple[str, Path]:
    root = (cwd or Path.cwd()).resolve() / "mlruns"
    return f"sqlite:///{root / 'mlflow.db'}", root / "artifacts"


def configure(cwd: Path | None = None) -> str:
    """Point MLflow at the store; returns the tracking URI."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri, artifacts = default_store(cwd)
        artifacts.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(name: str) -> str:
    import mlflow

    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:///"):
        db = Path(mlflow.get_tracking_uri().removeprefix("sqlite:///"))
        location = (db.parent / "artifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def registered_name(task: str, site: str) -> str:
    return f"{EXPERIMENT_PREFIX}-{task}-{site}"


@dataclass(frozen=True)
class Published:
    site: str
    run_id: str
    experiment: str
    model_name: str
    version: str
    aliases: tuple[str, ...]
    decision: str
    metrics: dict[str, float]


METRIC_KEYS = ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "auprc_ci_low", "auprc_ci_high", "brier", "prevalence", "mean_predicted")


def flat_metrics(held_out: dict[str, dict], primary: str) -> dict[str, float]:
    """``held_out/<metric>`` for the primary model and ``held_out/<model>/<metric>`` for all."""
    out: dict[str, float] = {}
    for model, record in held_out.items():
        for key in METRIC_KEYS:
            value = record.get(key)
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            out[f"held_out/{model}/{key}"] = float(value)
            if model == primary:
                out[f"held_out/{key}"] = float(value)
        for key in ("n", "events", "subjects"):
            if record.get(key) is not None:
                out[f"held_out/{model}/{key}"] = float(record[key])
    return out


def start_site_run(*, experiment: str, site: str, run_name: str, tags: dict[str, str]) -> str:
    """Create the site's run (closed immediately); tasks log into it by id."""
    import mlflow

    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id(experiment),
        run_name=run_name,
        tags={f"{TAG}.site": site, **{f"{TAG}.{k}": v for k, v in tags.items()}},
    )
    return run.info.run_id


def log_records(
    *,
    run_id: str,
    params: dict[str, object],
    metrics: dict[str, float],
    artifacts: dict[str, Path],
    dicts: dict[str, dict],
    note: str,
    tags: dict[str, str] | None = None,
) -> None:
    """Params, metrics, the run description and artifact files into an existing run."""
    import mlflow

    client = mlflow.MlflowClient()
    client.log_batch(
        run_id,
        metrics=[mlflow.entities.Metric(k, v, _now_ms(), 0) for k, v in sorted(metrics.items())],
        params=[mlflow.entities.Param(k, str(v)[:500]) for k, v in sorted(params.items())],
        tags=[mlflow.entities.RunTag("mlflow.note.content", note)]
        + [mlflow.entities.RunTag(f"{TAG}.{k}", v) for k, v in (tags or {}).items()],
    )
    for path, local in artifacts.items():
        client.log_artifact(run_id, str(local), artifact_path=str(Path(path).parent) if Path(path).parent != Path(".") else None)
    for path, data in dicts.items():
        client.log_dict(run_id, data, path)


MODEL_INPUTS = "model_inputs"


def champion_inputs(task: str, site: str, dest: Path) -> str | None:
    """Download the current champion's model inputs (XGBoost JSON, calibration,
    columns) into ``dest``; returns its version, or None when there is no champion."""
    import mlflow

    client = mlflow.MlflowClient()
    name = registered_name(task, site)
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except mlflow.exceptions.MlflowException:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    local = Path(client.download_artifacts(champion.run_id, MODEL_INPUTS, str(dest)))
    for f in local.iterdir():
        f.replace(dest / f.name)
    return str(champion.version)


def register_model(
    *, run_id: str, task: str, site: str, xgb_model_path: Path, n_features: int, promote: bool, decision: str
) -> tuple[str, str, tuple[str, ...]]:
    """Log the XGBoost model (JSON format, signature, synthetic input example) into the run,
    register it as ``challenger``, and move ``champion`` to it when ``promote``.

    Returns ``(registered name, version, aliases)``.
    """
    import mlflow
    import xgboost as xgb
    from mlflow.models import infer_signature

    client = mlflow.MlflowClient()
    clf = xgb.XGBClassifier()
    clf.load_model(xgb_model_path)
    # A synthetic input example (every feature absent): never a patient row.
    example = np.full((2, n_features), np.nan, dtype=np.float32)
    signature = infer_signature(example, np.array([0.1, 0.2]))
    name = registered_name(task, site)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.xgboost.log_model(
            clf, name="model", signature=signature, input_example=example, model_format="json",
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, "challenger", version)
    aliases: tuple[str, ...] = ("challenger",)
    if promote:
        client.set_registered_model_alias(name, "champion", version)
        aliases = ("challenger", "champion")
    client.set_model_version_tag(name, version, f"{TAG}.decision", decision)
    client.set_tag(run_id, f"{TAG}.decision", decision)
    return name, version, aliases


def log_dataset(run_id: str, *, name: str, digest: str, source: Path, context: str) -> None:
    """Record which data a run used: a digest and a location, never the rows."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # mlflow registers its local source class twice and says so
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        location = resolve_dataset_source(Path(source).resolve().as_uri())
    dataset = MetaDataset(location, name=name, digest=digest)
    client = mlflow.MlflowClient()
    client.log_inputs(run_id, datasets=[mlflow.entities.DatasetInput(dataset._to_mlflow_entity(), tags=[
        mlflow.entities.InputTag("mlflow.data.context", context)])])


def log_trials(parent_run_id: str, trials: list[dict]) -> list[str]:
    """One nested run per search trial under the site's run (params, tuning score, state)."""
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    ids = []
    for t in trials:
        run = client.create_run(
            parent.info.experiment_id, run_name=f"trial-{t['trial']}",
            tags={"mlflow.parentRunId": parent_run_id, f"{TAG}.site": parent.data.tags.get(f"{TAG}.site", ""),
                  f"{TAG}.trial_state": t["state"]},
        )
        client.log_batch(
            run.info.run_id,
            metrics=[mlflow.entities.Metric(f"tuning/{t['objective']}", float(t["value"]), _now_ms(), 0),
                     mlflow.entities.Metric("trial/seconds", float(t["seconds"]), _now_ms(), 0)],
            params=[mlflow.entities.Param(k, str(v)) for k, v in sorted(t["params"].items())],
        )
        client.set_terminated(run.info.run_id, "KILLED" if t["state"] == "pruned" else "FINISHED")
        ids.append(run.info.run_id)
    return ids


def log_run(*, experiment: str, run_name: str, tags: dict[str, str], metrics: dict[str, float],
            params: dict[str, object] | None = None, dicts: dict[str, dict] | None = None, note: str = "") -> str:
    """A complete, closed run in one call (external and temporal validation runs)."""
    run_id = start_site_run(experiment=experiment, site=tags.pop("site"), run_name=run_name, tags=tags)
    log_records(run_id=run_id, params=params or {}, metrics=metrics, artifacts={}, dicts=dicts or {}, note=note)
    return run_id


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def experiment_name(task: str) -> str:
    return f"{EXPERIMENT_PREFIX}/{task}"


def pull_summary(report: dict) -> dict:
    """The pull report as it may leave the site: counts suppressed below 11."""
    tables = {
        name: {k: privacy.suppress(t[k]) for k in ("read", "kept", "quarantined")}
        for name, t in report["tables"].items()
    }
    return {
        "site": report["site"],
        "subjects": privacy.suppress(report["subjects"]),
        "events": privacy.suppress(report["events"]),
        "quarantined": privacy.suppress(report["quarantined"]),
        "time_span": report["time_span"],
        "tables": tables,
    }


