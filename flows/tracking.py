"""The one MLflow adapter: it turns the plain records of a site's run into an MLflow run.

The store, in order: the ``uri`` passed to :func:`configure` (a study's ``tracking.uri``),
``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlruns/mlflow.db``. On a database store
every experiment gets an explicit artifact location: ``artifact_root`` (a study's
``tracking.artifact_root``), ``$FOREWARN_ARTIFACT_ROOT``, else the ``artifacts`` folder
beside a SQLite file or ``<cwd>/mlruns/artifacts``; MLflow's own default (``./mlruns``
of whichever process creates the experiment) would scatter a team's artifacts.
Paths are resolved to absolute ones once, in :func:`configure`. A URI is printed only
through :func:`redact_uri`: a database password never reaches a log.
Every run carries the same metric names so the compare view lines runs up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
from pydantic import ConfigDict, Field, field_validator

from forewarn.records import privacy
from forewarn.records.config import Strict
from forewarn.records.pull import table_counts

EXPERIMENT_PREFIX = "forewarn"
TAG = "forewarn"
ARTIFACT_ROOT_ENV = "FOREWARN_ARTIFACT_ROOT"
DATABASE_SCHEMES = ("postgresql", "mysql", "sqlite", "mssql")  # MLflow's SQLAlchemy stores, with any +driver
_SECRET_KEYS = {"password", "passwd", "pwd", "sslpassword", "token", "access_token", "secret"}
_HAS_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class TrackingSettings(Strict):
    """Where MLflow keeps a study's runs, registered models and artifacts (team mode)."""

    model_config = ConfigDict(hide_input_in_errors=True)  # a rejected URI may hold a password

    uri: str | None = Field(
        default=None,
        description=(
            "MLflow tracking URI shared by the team: a database URL such as "
            "'postgresql+psycopg://forewarn@db.example.org:5432/mlflow' (tables are created on "
            "first use), 'sqlite:////abs/path/mlflow.db', or an MLflow server 'https://...'. "
            "Default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db. Never put a "
            "password here (the study travels in Prefect flow-run parameters): use ~/.pgpass, "
            "PGPASSFILE or PGPASSWORD."
        ),
    )
    artifact_root: str | None = Field(
        default=None,
        description=(
            "Where new experiments keep their artifacts (models, reports, model inputs): an "
            "absolute folder or a URI that every team member, worker and the `forewarn ui` host "
            "can reach ('/shared/forewarn/artifacts', 'file:///...', 's3://bucket/forewarn'). "
            "Default: $FOREWARN_ARTIFACT_ROOT, else <cwd>/mlruns/artifacts (beside a SQLite file: "
            "its artifacts folder). Existing experiments keep the location they were created with."
        ),
    )

    @field_validator("uri")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        if value is not None and redact_uri(value) != value:
            raise ValueError(
                f"tracking.uri must not contain a password; got {redact_uri(value)!r}. "
                "Put the password in ~/.pgpass (or PGPASSFILE / PGPASSWORD) on each machine."
            )
        if value is not None and value != "databricks" and not _HAS_SCHEME.match(value):
            raise ValueError(
                f"tracking.uri must be a URI with a scheme (postgresql+psycopg://..., sqlite:////..., https://...); got {value!r}."
            )
        return value

    @field_validator("artifact_root")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not _HAS_SCHEME.match(value) and not Path(value).expanduser().is_absolute():
            raise ValueError(
                f"tracking.artifact_root must be an absolute folder or a URI every machine can reach; got {value!r}."
            )
        return value


def redact_uri(uri: str) -> str:
    """``uri`` with any password (``user:password@`` or a ``password=`` query key) masked as ``***``."""
    match = _HAS_SCHEME.match(uri)
    if not match:
        return re.sub(r"(?i)\b(password|passwd|pwd)\s*=\s*\S+", r"\1=***", uri)
    head, rest = uri[: match.end()], uri[match.end():]
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    query = urlsplit(uri).query
    if query:
        def mask(item: str) -> str:
            key, eq, _ = item.partition("=")
            return f"{key}=***" if eq and unquote(key).strip().lower() in _SECRET_KEYS else item
        tail = tail.replace(query, "&".join(mask(i) for i in query.split("&")), 1)
    return head + netloc + tail


def is_database_uri(uri: str) -> bool:
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    return scheme.split("+", 1)[0] in DATABASE_SCHEMES


def default_store(cwd: Path | None = None) -> tuple[str, Path]:
    root = (cwd or Path.cwd()).resolve() / "mlruns"
    return f"sqlite:///{root / 'mlflow.db'}", root / "artifacts"


def resolve_store(uri: str | None = None, artifact_root: str | None = None, cwd: Path | None = None) -> tuple[str, str | None]:
    """The tracking URI and the artifact root URI that :func:`configure` would use.

    The artifact root is None for a store that is not a database (an MLflow server decides).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_store(cwd)[0]
    root = artifact_root or os.environ.get(ARTIFACT_ROOT_ENV)
    if root:
        return uri, _as_uri(root, cwd)
    if not is_database_uri(uri):
        return uri, None
    if uri.startswith("sqlite:///"):
        return uri, (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return uri, default_store(cwd)[1].as_uri()


def _as_uri(root: str, cwd: Path | None) -> str:
    if _HAS_SCHEME.match(root):
        return root.rstrip("/")
    path = Path(root).expanduser()
    return (path if path.is_absolute() else (cwd or Path.cwd()) / path).resolve().as_uri()


def make_local_root(root: str) -> None:
    """Create a ``file://`` artifact root (other schemes are the object store's business)."""
    if root.startswith("file://"):
        Path(unquote(urlsplit(root).path)).mkdir(parents=True, exist_ok=True)


def configure(uri: str | None = None, artifact_root: str | None = None, *, cwd: Path | None = None) -> str:
    """Point MLflow (and processes started afterwards) at the store; returns the tracking URI.

    ``uri`` and ``artifact_root`` are a study's ``tracking`` settings; None falls back to
    ``$MLFLOW_TRACKING_URI`` / ``$FOREWARN_ARTIFACT_ROOT``, then to the local store.
    """
    import mlflow

    explicit = bool(artifact_root or os.environ.get(ARTIFACT_ROOT_ENV))
    uri, root = resolve_store(uri, artifact_root, cwd)
    if root is not None:
        make_local_root(root)
    # Exported (like MLflow exports the URI) so that experiment_id() and processes started
    # later agree; a SQLite store's own artifacts folder follows from its URI, so it is not
    # exported and cannot outlive a change of store in this process.
    if root is None or (not explicit and uri.startswith("sqlite:///")):
        os.environ.pop(ARTIFACT_ROOT_ENV, None)
    else:
        os.environ[ARTIFACT_ROOT_ENV] = root
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(name: str) -> str:
    import mlflow

    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    return mlflow.create_experiment(name, artifact_location=resolve_store(mlflow.get_tracking_uri())[1])


def ui_command(*, backend_store_uri: str, artifact_root: str, host: str = "127.0.0.1", port: int = 5000,
               allowed_hosts: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` command line for ``forewarn ui`` and the environment it adds.

    The store URI goes through the environment (``MLFLOW_BACKEND_STORE_URI``), so that a
    password in it never shows in the process list.
    """
    argv = [sys.executable, "-m", "mlflow", "server", "--default-artifact-root", artifact_root,
            "--host", host, "--port", str(port), "--workers", "1"]
    if allowed_hosts:
        argv += ["--allowed-hosts", allowed_hosts]
    return argv, {"MLFLOW_BACKEND_STORE_URI": backend_store_uri}


# The network's model (one model trained across the sites) is registered as if it were a
# site named "network" (``forewarn-<task>-network``); no site may take the name.
NETWORK = "network"


def registered_name(task: str, site: str) -> str:
    """``forewarn-<task>-<site>``; ``site`` is ``NETWORK`` for the network's model."""
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
CALIBRATION_KEYS = ("calibration_slope", "calibration_in_the_large", "ece", "ici", "e50", "e90")
# the model-based AUROC (``evaluation.metrics.model_based_concordance``): the primary model's only
CASE_MIX_KEYS = ("model_based_auroc",)
COUNT_KEYS = ("n", "events", "subjects")
HELD_OUT = "held_out"


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def _model_metrics(record: dict, model: str, prefix: str = HELD_OUT) -> dict[str, float]:
    """``<prefix>/<model>/<metric>`` and ``<prefix>/<model>/{n,events,subjects}``; for a
    baseline compared with the registered model on the same rows (``paired``:
    ``evaluation.evaluate.paired_with_primary``) also ``<prefix>/<model>/registered_minus_<metric>``
    with ``_ci_low`` and ``_ci_high`` (AUROC and AUPRC), so the compare view can sort runs by
    whether their model beat the baseline."""
    out = {f"{prefix}/{model}/{key}": float(record[key]) for key in METRIC_KEYS if _present(record.get(key))}
    out |= {f"{prefix}/{model}/{key}": float(record[key]) for key in COUNT_KEYS if record.get(key) is not None}
    for metric, d in (record.get("paired") or {}).items():
        for key, name in (("difference", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
            if _present(d.get(key)):
                out[f"{prefix}/{model}/registered_minus_{metric}{name}"] = float(d[key])
    return out


def flat_metrics(held_out: dict[str, dict], primary: str) -> dict[str, float]:
    """``held_out/<metric>`` for the primary model and ``held_out/<model>/<metric>`` for all."""
    out: dict[str, float] = {}
    for model, record in held_out.items():
        out |= _model_metrics(record, model)
        if model == primary:
            out |= {f"{HELD_OUT}/{key}": float(record[key]) for key in METRIC_KEYS if _present(record.get(key))}
    return out


def gap_metrics(gaps: list[dict] | None) -> dict[str, float]:
    """``held_out/gap/<group>/<metric>``: the fairness summary's largest difference between
    a subgroup column's published levels (``evaluation.clinical.subgroup_gaps``), so that
    the compare view can sort runs by it."""
    return {f"{HELD_OUT}/gap/{g['group']}/{g['metric']}": float(g["gap"]) for g in gaps or []}


def auroc_text(metrics: dict[str, float], prefix: str = HELD_OUT) -> str:
    """``0.880 [0.834, 0.917]`` from a run's ``held_out/auroc`` metrics; the reason when
    they were withheld (fewer than 11 events or non-events: ``evaluation.metrics.evaluate``)."""
    keys = [f"{prefix}/auroc", f"{prefix}/auroc_ci_low", f"{prefix}/auroc_ci_high"]
    if not all(k in metrics for k in keys):
        return f"withheld (fewer than {privacy.MIN_CELL} events or non-events)"
    return "{:.3f} [{:.3f}, {:.3f}]".format(*(metrics[k] for k in keys))


def auprc_text(metrics: dict[str, float], prefix: str = HELD_OUT) -> str:
    return f"{metrics[f'{prefix}/auprc']:.3f}" if f"{prefix}/auprc" in metrics else "withheld"


def evaluation_metrics(record: dict, *, model: str | None = None, prefix: str = HELD_OUT) -> dict[str, float]:
    """One model's metrics on the evaluation set under the names every run uses, whatever
    its validation design (the design is the ``validation_design`` tag, never the name):
    ``held_out/<metric>`` for ``METRIC_KEYS``, ``CALIBRATION_KEYS`` and ``CASE_MIX_KEYS``, and with ``model``
    also ``held_out/<model>/<metric>`` as :func:`flat_metrics` writes them. An internal
    run's primary model, an external run's shipped model and a temporal run's model so
    share their names; ``prefix="held_out/recalibrated"`` names an external run's model
    after recalibration at the validating site."""
    out = _model_metrics(record, model, prefix) if model else {}
    out |= {f"{prefix}/{key}": float(record[key]) for key in METRIC_KEYS if _present(record.get(key))}
    out |= {f"{prefix}/{key}": float(record[key]) for key in CALIBRATION_KEYS + CASE_MIX_KEYS if _present(record.get(key))}
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
    steps: dict[str, list[tuple[int, float]]] | None = None,
) -> None:
    """Params, metrics, the run description and artifact files into an existing run.
    ``steps`` are metrics with a value per step (``{name: [(step, value), ...]}``), which
    MLflow charts against the step."""
    import mlflow

    client = mlflow.MlflowClient()
    now = _now_ms()
    client.log_batch(
        run_id,
        metrics=[mlflow.entities.Metric(k, v, now, 0) for k, v in sorted(metrics.items())]
        + [mlflow.entities.Metric(k, v, now, step) for k, values in sorted((steps or {}).items()) for step, v in values],
        params=[mlflow.entities.Param(k, str(v)[:500]) for k, v in sorted(params.items())],
        tags=[mlflow.entities.RunTag("mlflow.note.content", note)]
        + [mlflow.entities.RunTag(f"{TAG}.{k}", v) for k, v in (tags or {}).items()],
    )
    for path, local in artifacts.items():
        if Path(path).name != Path(local).name:  # MLflow keeps the file's own name, whatever the key says
            raise ValueError(f"artifact {path!r} would be logged as {Path(local).name!r}; copy {local} to a file named "
                             f"{Path(path).name!r} first.")
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
    download_inputs(champion.run_id, dest)
    return str(champion.version)


def download_inputs(run_id: str, dest: Path, only: tuple[str, ...] | None = None) -> None:
    """A registration run's model inputs (``MODEL_INPUTS``), as files of ``dest``: the
    ``models.train.TrainedModels`` folder of the registered model; with ``only``, those of
    these names that the run has."""
    import mlflow

    client = mlflow.MlflowClient()
    dest.mkdir(parents=True, exist_ok=True)
    if only is not None:
        present = {Path(f.path).name for f in client.list_artifacts(run_id, MODEL_INPUTS)}
        for name in (n for n in only if n in present):
            Path(client.download_artifacts(run_id, f"{MODEL_INPUTS}/{name}", str(dest))).replace(dest / name)
        shutil.rmtree(dest / MODEL_INPUTS, ignore_errors=True)  # the emptied download folder
        return
    local = Path(client.download_artifacts(run_id, MODEL_INPUTS, str(dest)))
    for f in local.iterdir():
        f.replace(dest / f.name)
    local.rmdir()  # the emptied download folder


# A registered model as a study names it: NAME (its champion), NAME@ALIAS or NAME/VERSION.
MODEL_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(?P<alias>[A-Za-z][A-Za-z0-9_-]*)|/(?P<version>[1-9][0-9]*))?$")


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of a model reference; the alias is "champion" when neither
    is given. Raises ValueError naming the expected forms."""
    m = MODEL_REF.match(ref)
    if m is None:
        raise ValueError(f"{ref!r} is not a registered model: write NAME (its champion), NAME@ALIAS or NAME/VERSION, "
                         "e.g. forewarn-t2d_2y-academic, forewarn-t2d_2y-academic@challenger or forewarn-t2d_2y-academic/3.")
    alias = m["alias"] or (None if m["version"] else "champion")
    return m["name"], alias, m["version"]


@dataclass(frozen=True)
class RegisteredModel:
    """A version of a registered Forewarn model, as its registration run describes it."""

    ref: str
    name: str
    version: str
    run_id: str
    task: str
    task_digest: str
    site: str  # where it was trained: a site's name, or NETWORK
    study: str
    params: dict[str, str]  # its registration run's params (the model's make-up, as the compare view shows it)

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


def registered_model(ref: str) -> RegisteredModel:
    """Resolve ``ref`` (:func:`parse_model_ref`) in the registry. Raises ValueError when
    there is no such model, alias or version, when the version's run did not finish, or
    when it was not registered by Forewarn (no task or model inputs)."""
    import mlflow

    name, alias, version = parse_model_ref(ref)
    client = mlflow.MlflowClient()
    try:
        mv = (client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version))
    except mlflow.exceptions.MlflowException:
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise ValueError(f"registered model {ref!r}: the registry ({redact_uri(mlflow.get_tracking_uri())}) has no "
                         f"model {name!r} with {what}; check the name (forewarn-<task>-<site>) and that its study "
                         "logs to this store.") from None
    run = client.get_run(mv.run_id)
    tags = run.data.tags
    if tags.get(f"{TAG}.complete") != "true":
        raise ValueError(f"registered model {ref!r}: version {mv.version}'s run {mv.run_id} did not finish (its process "
                         "was stopped), so its inputs may be incomplete; name another version.")
    if not tags.get(f"{TAG}.task") or not tags.get(f"{TAG}.task_digest"):
        raise ValueError(f"registered model {ref!r}: version {mv.version}'s run {mv.run_id} has no forewarn.task and "
                         "forewarn.task_digest tags: it was not registered by Forewarn.")
    return RegisteredModel(ref=ref, name=name, version=str(mv.version), run_id=mv.run_id, task=tags[f"{TAG}.task"],
                           task_digest=tags[f"{TAG}.task_digest"],
                           site=tags.get(f"{TAG}.train_site") or tags.get(f"{TAG}.site", "?"),
                           study=tags.get(f"{TAG}.study", ""), params=dict(run.data.params))


def _run_json(run_id: str, artifact: str, dest: Path) -> dict | None:
    """A JSON artifact of a run (``config/study.json``, ``metrics.json``, ...) read through
    ``dest`` and removed from it (the caller keeps only what it takes), or None when the
    run has none."""
    import mlflow

    client = mlflow.MlflowClient()
    folder = str(Path(artifact).parent) if "/" in artifact else None
    if not any(f.path == artifact for f in client.list_artifacts(run_id, folder)):
        return None
    dest.mkdir(parents=True, exist_ok=True)
    path = Path(client.download_artifacts(run_id, artifact, str(dest)))
    record = json.loads(path.read_text())
    path.unlink()
    if folder:
        shutil.rmtree(dest / folder, ignore_errors=True)
    return record


def registered_features(run_id: str, dest: Path) -> dict | None:
    """The feature settings a registered model's study computed its columns with (its
    run's ``config/study.json``: ``features``), or None when the run has none."""
    study = _run_json(run_id, "config/study.json", dest)  # the owner's study: only its feature settings are kept
    return None if study is None else study.get("features")


def registered_task(run_id: str, dest: Path) -> dict | None:
    """The task definition a registered model was trained for (its run's
    ``config/task.json``), or None when the run has none (registered before it was kept)."""
    return _run_json(run_id, "config/task.json", dest)


def version_run_id(name: str, version: str) -> str:
    """The run that registered version ``version`` of registered model ``name``."""
    import mlflow

    return mlflow.MlflowClient().get_model_version(name, version).run_id


def model_provenance(run_id: str, dest: Path) -> dict:
    """What a registered model was made under, read from its registration run ``run_id``:
    ``study`` and ``task_digest`` (tags), ``split_seed`` (param, a string; None when the
    run has none) and ``features`` (:func:`registered_features`)."""
    import mlflow

    run = mlflow.MlflowClient().get_run(run_id)
    return {"study": run.data.tags.get(f"{TAG}.study", ""), "task_digest": run.data.tags.get(f"{TAG}.task_digest", ""),
            "split_seed": run.data.params.get("split_seed"), "features": registered_features(run_id, dest)}


def registered_threshold(run_id: str, dest: Path) -> float | None:
    """The alert threshold a site's registered model was published with (its run's
    ``metrics.json``: ``subgroup_threshold``, the operating point set on its tuning
    split), or None (a network model's registration run has none: each site sets its own)."""
    return registered_operating_point(run_id, dest)[0]


def registered_operating_point(run_id: str, dest: Path) -> tuple[float | None, float | None]:
    """``registered_threshold`` and the alert budget it was set for (the share of the
    tuning split's rows at or above it), each None where the run has none."""
    point = (_run_json(run_id, "metrics.json", dest) or {}).get("subgroup_threshold") or {}  # only these are kept
    threshold, budget = point.get("threshold"), point.get("alert_budget")
    return (None if threshold is None else float(threshold)), (None if budget is None else float(budget))


# What serving the registered model needs: XGBoost's scikit-learn wrapper (``XGBClassifier``)
# and its array inputs. Given explicitly, because MLflow otherwise infers them by loading
# the model in a fresh Python process on every ``log_model`` (4-20 s a model, most of the
# flow's MLflow time).
MODEL_REQUIREMENTS = ("xgboost", "scikit-learn", "numpy", "scipy")
SERVING_CODE = Path(__file__).resolve().with_name("serving.py")


def model_requirements() -> list[str]:
    """``MODEL_REQUIREMENTS`` pinned to the installed versions, e.g. ``xgboost==3.2.0``."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in MODEL_REQUIREMENTS]


@contextmanager
def _quiet_model_from_code():
    """Logging a model from code loads it back to check the input example: without the
    artifact progress bars that loading draws."""
    saved = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = saved


def register_model(
    *, run_id: str, task: str, site: str, xgb_model_path: Path, n_features: int, promote: bool, decision: str,
    tags: dict[str, str] | None = None, offset_path: Path | None = None, blend_path: Path | None = None,
    calibration_path: Path | None = None,
) -> tuple[str, str, tuple[str, ...]]:
    """Log the primary model (signature, synthetic input example) into the run, register
    it as ``challenger``; with ``promote`` the caller moves ``champion`` to it
    (:func:`set_champion`) once the run holds the model's inputs, just before finishing it.

    The model is an MLflow model from code (``flows/serving.py``) holding its JSON files:
    the XGBoost trees (``xgb_model_path``, XGBoost's own format) and, where the model has
    them, the L1-logistic offset the trees boost from (``offset_path``), the blend with
    the L1-logistic (``blend_path``) and the calibrator (``calibration_path``). Its
    ``pyfunc`` ``predict`` returns the outcome's calibrated probability per row (the
    uncalibrated one, ``models.train.PrimaryModel.probability``, with
    ``params={"calibrated": False}``).

    Returns ``(registered name, version, aliases)``.
    """
    import mlflow
    from mlflow.models import infer_signature

    client = mlflow.MlflowClient()
    # A synthetic input example (every feature absent): never a patient row.
    example = np.full((2, n_features), np.nan, dtype=np.float32)
    signature = infer_signature(example, np.array([0.1, 0.2]), params={"calibrated": True})
    name = registered_name(task, site)
    artifacts = {"xgboost": str(xgb_model_path)}
    for key, path in (("offset", offset_path), ("blend", blend_path), ("calibration", calibration_path)):
        if path is not None:
            artifacts[key] = str(path)
    with mlflow.start_run(run_id=run_id), _quiet_model_from_code():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(SERVING_CODE), artifacts=artifacts, signature=signature,
            input_example=example, pip_requirements=model_requirements(),
        )
    # Registered through the client: ``registered_model_name`` above would print MLflow's
    # "Successfully registered model" lines straight to stderr, between the flow's own lines.
    try:
        client.create_registered_model(name)
    except mlflow.MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    version = str(client.create_model_version(
        name, source=f"models:/{info.model_id}", run_id=run_id, model_id=info.model_id,
    ).version)
    # The link from the logged model's page to its registered version, as MLflow's own
    # registration writes it.
    client.set_logged_model_tags(info.model_id, {"mlflow.modelVersions": json.dumps([{"name": name, "version": version}])})
    client.set_registered_model_alias(name, "challenger", version)
    # ``champion`` moves only by ``set_champion``, once the run holds all the next night needs.
    aliases: tuple[str, ...] = ("challenger", "champion") if promote else ("challenger",)
    client.set_model_version_tag(name, version, f"{TAG}.decision", decision)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, f"{TAG}.{key}", value)
    client.set_tag(run_id, f"{TAG}.decision", decision)
    return name, version, aliases


def set_champion(name: str, version: str) -> None:
    """Move the ``champion`` alias of registered model ``name`` to ``version``."""
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)


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
    """One nested run per search trial under the site's run (params, tuning score, state),
    tagged with the parent's site and task."""
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    # Not the design or digests: a search for a design's runs (``tags.forewarn.validation_design``)
    # must find the site's runs, not their trials too.
    inherited = {k: v for k, v in parent.data.tags.items() if k in {f"{TAG}.site", f"{TAG}.task"}}
    inherited.setdefault(f"{TAG}.site", "")
    ids = []
    for t in trials:
        run = client.create_run(
            parent.info.experiment_id, run_name=f"trial-{t['trial']}",
            tags={"mlflow.parentRunId": parent_run_id, **inherited, f"{TAG}.trial_state": t["state"]},
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
            params: dict[str, object] | None = None, dicts: dict[str, dict] | None = None, note: str = "",
            datasets: list[dict] | None = None, artifacts=None, result=None) -> str:
    """A complete, closed run in one call (external, temporal and network validation runs,
    drift checks); ``datasets`` are :func:`log_dataset`'s keyword arguments, one dict a
    dataset; ``artifacts``, called with the new run's id, returns the files to log (name
    in the run: path), for a report that shows its own run id. ``result``, called with
    the run's id, returns what the flow keeps of the run (a report row): stored as the
    run's ``forewarn.stage_result`` tag before the run is marked complete, so that a
    process killed after completing it can reuse the run (:func:`stage_result`)."""
    tags = dict(tags)
    run_id = start_site_run(experiment=experiment, site=tags.pop("site"), run_name=run_name, tags=tags)
    files = artifacts(run_id) if artifacts is not None else {}
    log_records(run_id=run_id, params=params or {}, metrics=metrics, artifacts=files, dicts=dicts or {}, note=note)
    for dataset in datasets or []:
        log_dataset(run_id, **dataset)
    if result is not None:
        import mlflow

        mlflow.MlflowClient().set_tag(run_id, f"{TAG}.{STAGE_RESULT}", json.dumps(result(run_id), default=str))
    finish_run(run_id)
    return run_id


STAGE_RESULT = "stage_result"


def stage_result(stage_key: str) -> tuple[str, dict] | None:
    """(run id, kept result) of the complete run logged for ``stage_key`` with a ``result``
    (:func:`log_run`), or None when there is none."""
    run = completed_run(stage_key)
    saved = run.data.tags.get(f"{TAG}.{STAGE_RESULT}") if run is not None else None
    return (run.info.run_id, json.loads(saved)) if saved else None


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def experiment_name(task: str) -> str:
    return f"{EXPERIMENT_PREFIX}/{task}"


def version_train_key(name: str, version: str) -> str:
    """The ``forewarn.train_key`` tag of a registered version (what its external-validation
    runs are tagged with, ``forewarn.model_train_key``); empty when it has none."""
    import mlflow

    return mlflow.MlflowClient().get_model_version(name, version).tags.get(f"{TAG}.train_key", "")


def external_recalibration(task: str, train_site: str, eval_site: str, train_key: str) -> dict | None:
    """What the latest complete external-validation run of the model ``train_site``
    trained from ``train_key`` (:func:`external_run`) published of the calibrator it fitted
    on ``eval_site``'s tuning split (:func:`run_recalibration`), or None when there is no
    such run."""
    run = external_run(task, train_site, eval_site, train_key)
    return None if run is None else run_recalibration(run)


def run_recalibration(run) -> dict | None:
    """The calibrator an external-validation ``run`` fitted on its site's tuning split
    (``evaluation.validation.recalibration_summary``, with ``run_id``), or None when it did
    not recalibrate (1-10 tuning events or non-events there)."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="forewarn-external-") as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="validation/external.json",
                                                   dst_path=tmp)
        recalibration = json.loads(Path(path).read_text()).get("recalibration") or {}
    return None if recalibration.get("method") is None else recalibration | {"run_id": run.info.run_id}


def external_run(task: str, train_site: str, eval_site: str, train_key: str):
    """The latest complete external-validation run (an ``mlflow.entities.Run``) of the
    model ``train_site`` trained from ``train_key``, at ``eval_site``; None when there is none."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name(task))
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{TAG}.validation_design` = 'external' and tags.`{TAG}.site` = '{eval_site}' and "
        f"tags.`{TAG}.train_site` = '{train_site}' and tags.`{TAG}.model_train_key` = '{train_key}' and "
        f"tags.`{TAG}.complete` = 'true'", order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def pull_summary(report: dict) -> dict:
    """The pull report as it may leave the site: subjects and events suppressed below 11,
    and the per-table counts and total quarantined published only when none of them is
    1..10 (``records.pull.table_counts``)."""
    tables, quarantined = table_counts(report)
    return {
        "site": report["site"],
        "subjects": privacy.suppress(report["subjects"]),
        "events": privacy.suppress(report["events"]),
        "quarantined": quarantined,
        "time_span": privacy.month_span(report["time_span"]),
        "tables": tables,
    }


# --- what the nightly flow's stages need ---------------------------------------------------


def current_uri() -> str:
    """The tracking URI in use, redacted (it keys the stages that log to MLflow)."""
    import mlflow

    return redact_uri(mlflow.get_tracking_uri())


def redacted_uri() -> str:
    return current_uri()


def champion_version(task: str, site: str) -> str | None:
    """The version behind the ``champion`` alias, or None."""
    info = champion_info(task, site)
    return info[0] if info else None


def champion_info(task: str, site: str) -> tuple[str, dict[str, str]] | None:
    """The champion's version and its model-version tags, or None."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(registered_name(task, site), "champion")
    except mlflow.exceptions.MlflowException:
        return None
    if client.get_run(version.run_id).data.tags.get(f"{TAG}.complete") != "true":
        # Registered by a process killed before it finished the run: its inputs may be
        # missing, so it is no champion to compare with (the run is abandoned when its
        # stage runs again).
        return None
    return str(version.version), dict(version.tags or {})


def registered_with(task: str, site: str, train_key: str) -> tuple[str, tuple[str, ...]] | None:
    """The version of ``registered_name(task, site)`` that a complete run registered from
    these very training inputs (model-version tag ``forewarn.train_key``), with its
    aliases; None when there is none. A model is registered once: a later run of the same
    trees (tonight's validations changed, not the model) refers to this version."""
    import mlflow

    client = mlflow.MlflowClient()
    name = registered_name(task, site)
    found = [v for v in client.search_model_versions(f"name = '{name}'")
             if (v.tags or {}).get(f"{TAG}.train_key") == train_key
             and client.get_run(v.run_id).data.tags.get(f"{TAG}.complete") == "true"]
    if not found:
        return None
    version = str(min(int(v.version) for v in found))
    return version, tuple(sorted(client.get_model_version(name, version).aliases or ()))


def alias_text(aliases) -> str:
    """What a version's aliases mean, for the console: ``champion`` (the version served;
    it is also the newest, ``challenger``, when this night promoted it), else
    ``challenger, not promoted`` (the champion stays), else ``no alias: an earlier version``."""
    if "champion" in aliases:
        return "champion"
    if "challenger" in aliases:
        return "challenger, not promoted"
    return "no alias: an earlier version"


def version_aliases(task: str, site: str, version: str) -> tuple[str, ...]:
    """The aliases of ``version`` of ``registered_name(task, site)``."""
    import mlflow

    return tuple(sorted(mlflow.MlflowClient().get_model_version(registered_name(task, site), version).aliases or ()))


def latest_version(task: str, site: str) -> tuple[str, str, tuple[str, ...]] | None:
    """(registered name, its newest version, that version's aliases), or None when nothing
    is registered under ``registered_name(task, site)``."""
    import mlflow

    name = registered_name(task, site)
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}'")
    if not versions:
        return None
    newest = str(max(int(v.version) for v in versions))
    # A search leaves the aliases out; the version itself has them.
    return name, newest, tuple(sorted(mlflow.MlflowClient().get_model_version(name, newest).aliases or ()))


def finish_run(run_id: str) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    client.set_tag(run_id, f"{TAG}.complete", "true")
    client.set_terminated(run_id, "FINISHED")


def published_from(site: str, *, task: str | None = None, design: str | None = None) -> bool:
    """Whether the store holds a run of ``site``'s results (in ``task``'s experiment, of
    validation ``design``), finished or not: a site that published keeps a people ledger
    (``records.people``), so one that has none lost it."""
    import mlflow

    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()
                   if (e.name == experiment_name(task) if task else e.name.startswith(f"{EXPERIMENT_PREFIX}/"))]
    if not experiments:
        return False
    query = f"tags.`{TAG}.site` = '{site}'" + (f" AND tags.`{TAG}.validation_design` = '{design}'" if design else "")
    return bool(client.search_runs(experiments, filter_string=query, max_results=1))


def abandon_runs(value: str, tag: str = "stage_key") -> list[str]:
    """Runs tagged ``forewarn.<tag> = value`` left unfinished by a killed process: marked
    KILLED, and the model versions they registered deleted, so that a resumed run leaves
    one of each.
    A run counts as finished once :func:`finish_run` has tagged it complete."""
    import mlflow

    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments() if e.name.startswith(f"{EXPERIMENT_PREFIX}/")]
    if not experiments:
        return []
    runs = client.search_runs(experiments, filter_string=f"tags.`{TAG}.{tag}` = '{value}'")
    abandoned = []
    for run in runs:
        if run.data.tags.get(f"{TAG}.complete") == "true":
            continue
        for version in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
            client.delete_model_version(version.name, version.version)
        client.set_terminated(run.info.run_id, "KILLED")
        abandoned.append(run.info.run_id)
    return abandoned


def completed_run(value: str, tag: str = "stage_key"):
    """The complete run tagged ``forewarn.<tag> = value`` (the latest if several), or None."""
    import mlflow

    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments() if e.name.startswith(f"{EXPERIMENT_PREFIX}/")]
    if not experiments:
        return None
    runs = client.search_runs(experiments, filter_string=f"tags.`{TAG}.{tag}` = '{value}' AND tags.`{TAG}.complete` = 'true'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def run_url(experiment: str, run_id: str) -> str:
    """A link to the run: on the tracking server when the URI is one, else on the UI that
    ``forewarn ui`` starts (http://127.0.0.1:5000)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    found = mlflow.get_experiment_by_name(experiment)
    return f"{base}/#/experiments/{found.experiment_id}/runs/{run_id}" if found else ""
