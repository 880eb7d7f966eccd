"""The nightly flow: pull -> label -> featurize -> drift check -> train -> evaluate/explain
-> external and temporal validation -> promotion -> publish, per site and task.

Each stage is a Prefect task around a plain, unit-tested function, and each persists its
result under a key made of the content digests of its inputs (``forewarn.flows.cache``):
a rerun on unchanged data recomputes nothing, and a run killed at any point resumes from
the last finished stage. Site pulls run concurrently and retry transient source errors
with backoff; a site that fails is reported and the other sites' work goes on. Row-level
data stays in each site's work folder; only aggregates (metrics, figures, the report, the
model, the drift profile) reach MLflow.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import ValidationError

from forewarn.evaluation import drift as drift_check
from forewarn.evaluation.evaluate import (
    Evaluation,
    evaluate_and_explain,
    held_out_metrics,
    label_demographics,
)
from forewarn.evaluation.learning_curve import rising
from forewarn.evaluation.metrics import BETWEEN_SITES_METRICS, between_sites
from forewarn.evaluation.report import (
    published_attrition,
    report_context,
    validation_context,
    write_report,
)
from forewarn.evaluation.validation import (
    auroc_on,
    external_validation,
    held_out_summary,
    paired_auroc,
)
from forewarn.features.featurize import (
    SPEED_SETTINGS,
    FeatureConfig,
    FeatureMatrix,
    featurize,
    recorded_settings,
)
from forewarn.features.labels import LabelSet, TaskSpec, TemporalSplit, label_dataset, load_task
from forewarn.flows import artifact, tracking
from forewarn.flows.cache import Stage, StageCache, key_of, source_digest
from forewarn.flows.executor import maybe_dask_client, task_mapper
from forewarn.flows.study import SiteConfig, Study
from forewarn.flows.worklist import worklists
from forewarn.models.federated import (
    FederatedModel,
    SiteRows,
    shared_columns,
    train_federated,
    untrainable,
)
from forewarn.models.promotion import decide, decide_network
from forewarn.models.site_process import SiteProcess
from forewarn.models.train import PRIMARY, TrainedModels, train_models, trainability
from forewarn.records import deid, privacy, schema
from forewarn.records.config import explain
from forewarn.records.people import (
    PeopleLedger,
    held_reason,
    person_digests,
    task_people,
    unledgered_reason,
)
from forewarn.records.pull import (
    PULL_CHANGE_ALERT,
    PullFailed,
    PullResult,
    merge_parts,
    pull_changes,
)
from forewarn.records.sources import pull_source

log = logging.getLogger("forewarn")


@dataclass(frozen=True)
class SiteResult:
    """What one (site, task) produced: a published model, or why it was skipped or failed."""

    site: str
    task: str
    status: str  # "published", "skipped", "held" (records.people), "failed"; for a registered model from outside
    # the study (validation.registered): "validated" or "not validated"
    reason: str = ""
    run_id: str = ""
    experiment: str = ""
    model_name: str = ""
    version: str = ""
    aliases: tuple[str, ...] = ()
    decision: str = ""
    report_path: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    drift: dict = field(default_factory=dict)
    cached: bool = False
    aliases_recorded: bool = False  # a cached result whose registry aliases could not be read: the recorded ones
    worklist: str = ""  # with worklist.enabled: the site's worklist file and its model, or why there is none
    worklist_failed: bool = False


@dataclass(frozen=True)
class ChampionCheck:
    """The current champion, re-scored on today's data with its own columns."""

    version: str
    auroc: float
    model: TrainedModels
    matrix: FeatureMatrix
    notes: list[str] = field(default_factory=list)  # ``champion_settings``: what the decision must say about it
    codes: list[str] | None = None  # tonight's vocabulary under its settings (``champion_vocabulary``), if not tonight's

    @property
    def profile_path(self) -> Path:
        return self.model.dir / "profile.json"


@dataclass(frozen=True)
class NetworkChampion:
    """The network's champion, re-scored at each site on today's held-out rows with its
    own columns (``auroc`` per site); ``same`` when it was trained on these very features
    (the candidate is the champion: nothing to compare)."""

    version: str
    auroc: dict[str, float]
    same: bool = False
    content: str | None = None  # ``model_content`` of the champion
    model: TrainedModels | None = None
    matrices: dict[str, FeatureMatrix] = field(default_factory=dict)  # each site's rows in the champion's columns
    notes: list[str] = field(default_factory=list)  # ``champion_settings``: what the decision must say about it


@dataclass(frozen=True)
class NetworkRun:
    """What ``network_task`` made of one task: per site its stages (features in the
    network's columns, the coordinator's model, the site's validation), or why there is
    no model; the champion check and the drift record (``sites``: each site's own check
    against its part of the champion's profile; ``decision``: the combined action); the
    model's train key; the champion's stages each site used."""

    stages: dict[str, list[Stage]]
    reason: str | None = None
    champion: NetworkChampion | None = None
    drift: dict = field(default_factory=dict)
    key: str = ""
    used: dict[str, list[Stage]] = field(default_factory=dict)


# --- retries ----------------------------------------------------------------------------

TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EBUSY, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED,
                    errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPIPE}


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: lost or refused connections, timeouts, a source file locked
    by its writer. Bad data (``PullFailed``), bad configuration and missing files are not."""
    import duckdb
    import sqlalchemy.exc

    if isinstance(exc, PullFailed | deid.PHILeakError | FileNotFoundError | ValueError | PermissionError):
        return False
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.DisconnectionError | sqlalchemy.exc.TimeoutError):
        return True
    if isinstance(exc, duckdb.IOException) and ("lock" in str(exc).lower() or "resource temporarily" in str(exc).lower()):
        return True
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)


def _retry_if_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classify whatever the pull raised
        return is_transient(exc)
    return False


# --- stages -------------------------------------------------------------------------------


def _cfg(model) -> dict:
    return json.loads(model.model_dump_json())


def _features_cfg(features: FeatureConfig) -> dict:
    return _cfg(features) | {"n_workers": None}  # workers change the speed, not the matrix


def model_features(study: Study, settings: dict | None) -> tuple[FeatureConfig, list[str]]:
    """The feature settings a registered model's columns are computed with: those its own
    study trained it with (``settings``, its registration run's: ``tracking.model_provenance``;
    ``featurize.recorded_settings``), with this study's speed settings; this study's where
    the run has none. Returns them with the recorded settings this code no longer knows."""
    return (study.features, []) if settings is None else recorded_settings(settings, study.features)


def settings_differ(features: FeatureConfig, study: Study) -> list[str]:
    """The feature settings (not the speed ones) in which ``features`` differs from the
    study's, e.g. ``windows 30d,365d,full (this study's 365d,full)``."""
    mine, theirs = _features_cfg(study.features), _features_cfg(features)
    show = lambda v: ",".join(map(str, v)) if isinstance(v, list) else str(v).lower()  # noqa: E731
    return [f"{k} {show(theirs[k])} (this study's {show(mine[k])})" for k in theirs
            if k not in SPEED_SETTINGS and theirs[k] != mine.get(k)]


def champion_settings(study: Study, spec: TaskSpec, version: str, provenance: dict) -> tuple[FeatureConfig, list[str]]:
    """The feature settings the champion is scored with (``model_features``: its own) and
    what the promotion decision must say about a champion made under other settings than
    this study's (``tracking.model_provenance``): another study, another definition of the
    task, another split, other feature settings. Where its settings are unknown (a run
    without ``config/study.json``) or no longer valid, it is scored with this study's, and
    the notes say so."""
    notes = []
    try:
        features, dropped = model_features(study, provenance.get("features"))
    except ValidationError as exc:  # settings this code no longer accepts
        features, dropped = study.features, []
        problems = "; ".join(line.strip(" -") for line in explain(exc, FeatureConfig).splitlines())
        notes.append(f"champion v{version}'s feature settings are not valid here ({problems}), so it is scored "
                     "with this study's")
    if dropped:
        notes.append(f"champion v{version} was trained with feature settings this version of Forewarn no longer has "
                     f"({', '.join(dropped)}); its columns are computed without them")
    if provenance.get("features") is None:
        notes.append(f"champion v{version}'s run does not record its feature settings, so it is scored with this "
                     "study's")
    owner = provenance.get("study")
    if owner and owner != study.name:
        notes.append(f"champion v{version} was registered by study {owner!r}, not {study.name!r}; both are scored on "
                     "this study's held-out rows")
    digest = provenance.get("task_digest")
    if digest and digest != spec.digest():
        notes.append(f"champion v{version} was trained for another definition of {spec.name} (task digest {digest[:12]}; "
                     f"this study's {spec.digest()[:12]}) and is judged on this definition's labels")
    seed = provenance.get("split_seed")
    if seed is not None and str(seed) != str(study.split_seed):
        notes.append(f"champion v{version} was trained with split_seed {seed} (this study's {study.split_seed}): some of "
                     "these held-out rows may be its training rows, which favours it")
    differ = settings_differ(features, study)
    if differ:
        notes.append(f"champion v{version} is scored in its columns computed with the feature settings it was trained "
                     f"with: {'; '.join(differ)}")
    return features, notes


def _parquet(rel: Path) -> bool:
    return rel.suffix == ".parquet"


def _shards(study: Study):
    """With ``executor: dask``, featurization shards are Prefect tasks on the flow's
    ``DaskTaskRunner``; locally ``featurize`` runs them in its own worker processes."""
    return task_mapper() if study.executor.is_dask else None


def pull_site(site: SiteConfig, demo: bool, cache: StageCache, part: tuple[int, int] | None = None) -> Stage:
    """The site's de-identified events (with ``part``, one part of its subjects; see
    ``merge_site``). File sources are keyed on their content, so an unchanged source is
    not pulled again; a database is pulled every run (it cannot be hashed without
    reading it) and what follows is keyed on what the pull wrote."""
    secret = deid.load_secret(site.name, demo=demo, secret_file=site.deid.secret_file)
    config = deid.DeidConfig(secret, max_shift_days=site.deid.max_shift_days)
    source = source_digest(site.source.location)
    params = {"site": site.name, "format": site.source.format, "db_schema": site.source.db_schema,
              "max_shift_days": site.deid.max_shift_days, "max_bad_fraction": site.max_bad_fraction,
              "secret": hashlib.sha256(b"forewarn stage key\0" + secret).hexdigest()[:16]}
    if part is not None:
        params["part"] = list(part)
    key = key_of("pull", params, [source or f"database pulled at {datetime.now(UTC).isoformat()}"])

    def compute(out: Path) -> PullResult:
        return pull_source(site.source.format, site.source.location, out / "pull", site=site.name, config=config,
                           max_bad_fraction=site.max_bad_fraction, db_schema=site.source.db_schema, part=part)

    return cache.run("pull" if part is None else f"pull-part-{part[0]}", key, compute, digest_of=_parquet)


@task(name="pull", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[10, 30, 90], retry_condition_fn=_retry_if_transient)
def pull_task(site: SiteConfig, demo: bool, cache: StageCache, part: tuple[int, int] | None = None) -> Stage:
    return pull_site(site, demo, cache, part)


def merge_site(site: SiteConfig, parts: list[Stage], cache: StageCache) -> Stage:
    """One pull from the site's parts (``executor.pull_parts``), keyed on their content:
    the bad-record gate and the quality summary judge the whole site."""
    key = key_of("merge pull", {"site": site.name, "max_bad_fraction": site.max_bad_fraction}, [p.digest for p in parts])
    return cache.run("pull", key, lambda out: merge_parts([p.result for p in parts], out / "pull", site=site.name,
                                                          max_bad_fraction=site.max_bad_fraction), digest_of=_parquet)


@task(name="merge pull parts", cache_policy=NO_CACHE)
def merge_task(site: SiteConfig, parts: list[Stage], cache: StageCache) -> Stage:
    return merge_site(site, parts, cache)


@task(name="label", cache_policy=NO_CACHE)
def label_task(pull: Stage, spec: TaskSpec, study: Study, cache: StageCache) -> Stage:
    key = key_of("label", {"task": spec.digest(), "split_seed": study.split_seed}, [pull.digest])
    return cache.run(f"label-{spec.name}", key,
                     lambda out: label_dataset(pull.result.events_dir, spec, out, split_seed=study.split_seed))


def featurize_stage(pull: Stage, labels: Stage, study: Study, cache: StageCache, *, name: str,
                    columns: Stage | None = None, features: FeatureConfig | None = None,
                    extra: dict | None = None) -> Stage:
    """Features for ``labels``; with ``columns`` (a model's stage folder holding
    ``columns.parquet``) the model's columns are applied instead of a new vocabulary,
    computed as ``features`` says (by default the study's settings)."""
    features = features or study.features
    inputs = [pull.digest, labels.digest] + ([columns.digest] if columns is not None else [])
    key = key_of("featurize", {"features": _features_cfg(features), **(extra or {})}, inputs)

    def compute(out: Path) -> FeatureMatrix:
        table, splits, _ = labels.result.load()
        fixed = pd.read_parquet(columns.dir / "model" / "columns.parquet") if columns is not None else None
        return featurize(pull.result.events_dir, table, splits, out, features, codes_path=pull.result.codes_path,
                         columns=fixed, map_shards=_shards(study))

    return cache.run(name, key, compute)


@task(name="featurize", cache_policy=NO_CACHE)
def featurize_task(pull: Stage, labels: Stage, spec: TaskSpec, study: Study, cache: StageCache) -> Stage:
    return featurize_stage(pull, labels, study, cache, name=f"features-{spec.name}")


def train_key(matrix: Stage, study: Study) -> str:
    return key_of("train", _cfg(study.models) | {"executor": study.executor.kind}, [matrix.digest])


@task(name="train", cache_policy=NO_CACHE)
def train_task(matrix: Stage, spec: TaskSpec, study: Study, cache: StageCache) -> Stage:
    """XGBoost trains on the Dask cluster with ``executor: dask`` (``xgboost.dask``)."""
    key = train_key(matrix, study)

    def compute(out: Path) -> TrainedModels:
        with maybe_dask_client(study.executor) as client:
            return train_models(matrix.result, out, study.models, client=client)

    return cache.run(f"train-{spec.name}", key, compute)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(matrix: Stage, trained: Stage, labels: Stage, spec: TaskSpec, study: Study, site: str,
                  cache: StageCache, pull: Stage) -> Stage:
    """The pull's events give the held-out people's race and ethnicity for the subgroup tables."""
    key = key_of("evaluate", {"evaluation": _cfg(study.evaluation), "site": site},
                 [matrix.digest, trained.digest, labels.digest, pull.digest])
    return cache.run(f"evaluate-{spec.name}", key, lambda out: evaluate_and_explain(
        matrix.result, trained.result, out, study.evaluation, site=site, outcomes_path=labels.result.outcomes_path,
        models=study.models, events_dir=pull.result.events_dir))


@task(name="champion check", cache_policy=NO_CACHE)
def champion_task(site: SiteConfig, spec: TaskSpec, study: Study, pull: Stage, labels: Stage,
                  cache: StageCache) -> tuple[list[Stage], ChampionCheck] | None:
    """Download the current champion's inputs (model, columns, drift profile) and score it
    on today's held-out rows with its own columns; None when there is no champion."""
    version = tracking.champion_version(spec.name, site.name)
    if version is None:
        return None
    model = fetch_champion(spec.name, site.name, version, cache, f"champion-{spec.name}")
    # its columns computed as its own study computed them: a study whose feature settings
    # changed since would otherwise score the champion in columns it was not trained on
    features, notes = champion_settings(study, spec, version, model.result["provenance"])
    matrix = featurize_stage(pull, labels, study, cache, name=f"champion-features-{spec.name}", columns=model,
                             features=features)
    trained = TrainedModels(model.dir / "model")
    codes = champion_vocabulary(pull, labels, study, features, cache, f"champion-vocabulary-{spec.name}")
    check = ChampionCheck(version, auroc_on(trained, matrix.result), trained, matrix.result, notes,
                          codes and vocabulary_of_matrix(codes.result))
    return [model, matrix] + ([codes] if codes else []), check


def champion_vocabulary(pull: Stage, labels: Stage, study: Study, features: FeatureConfig, cache: StageCache,
                        name: str) -> Stage | None:
    """Tonight's data featurized as the champion's settings would choose a vocabulary (its
    columns hold tonight's vocabulary under those settings), for the drift check's
    vocabulary churn; None when its feature settings are tonight's (the site's own matrix
    then holds that vocabulary). Otherwise churn would count what the changed settings add
    or drop as drift. A featurization of its own: only the columns that some train row
    fills are kept, as in the champion's, so the vocabulary follows the windows and
    aggregations too, not only the vocabulary rule (``min_code_subjects``, roll-ups)."""
    if not settings_differ(features, study):
        return None
    return featurize_stage(pull, labels, study, cache, name=name, features=features)


def fetch_champion(task: str, site: str, version: str, cache: StageCache, stage: str) -> Stage:
    """The champion's model inputs (``model/``) and what it was made under
    (``tracking.model_provenance``: the stage's result ``provenance``), fetched once."""
    name = tracking.registered_name(task, site)
    run_id = tracking.version_run_id(name, version)  # the version resolved once: the alias may move meanwhile

    def fetch(out: Path) -> dict:
        tracking.download_inputs(run_id, out / "model")
        return {"version": version, "provenance": tracking.model_provenance(run_id, out / "run")}

    key = key_of("champion model", {"model": name, "version": version, "run": run_id, "tracking": tracking.current_uri()}, [])
    return cache.run(stage, key, fetch)


def vocabulary_of_matrix(matrix: FeatureMatrix) -> list[str]:
    """The codes of a feature matrix's columns."""
    return sorted(set(pd.read_parquet(matrix.columns_path)["code"]))


def drift_record(check: ChampionCheck | None, matrix: Stage, study: Study) -> dict:
    """Drift of today's data against the champion's training data, and the policy's action."""
    if check is None:
        return {"compare": None, "decision": drift_check.decide(None, study.drift)}
    return drift_against(check.profile_path, check.version, check.matrix, matrix, study, codes=check.codes)


def drift_against(profile_path: Path, version: str, champion_matrix: FeatureMatrix, matrix: Stage, study: Study,
                  why_none: str = "trained before drift checks", codes: list[str] | None = None) -> dict:
    """Today's rows in the champion's columns (``champion_matrix``) against the champion's
    profile of its train rows, today's vocabulary being ``codes`` (chosen under the
    champion's settings, where they are not tonight's) or else ``matrix``'s (the site's
    own); ``why_none`` says why a champion may have no profile."""
    if not profile_path.is_file():
        decision = {"action": "retrain", "drifted": False,
                    "reasons": [f"champion v{version} has no drift profile of this site's data ({why_none})"]}
        return {"compare": None, "decision": decision}
    reference = json.loads(profile_path.read_text())
    X, rows, _ = champion_matrix.load()
    new_codes = codes if codes is not None else vocabulary_of_matrix(matrix.result)
    # assess decides on the exact PSIs; the record it returns withholds those of small new bins.
    return drift_check.assess(reference, X, rows, new_codes, study.drift) | {"champion_version": version}


@task(name="external validation", cache_policy=NO_CACHE)
def external_task(model_site: str, trained: Stage, model_matrix: Stage, pull: Stage, labels: Stage, study: Study,
                  spec: TaskSpec, cache: StageCache, *, eval_site: str, threshold: float | None = None,
                  features: FeatureConfig | None = None) -> Stage:
    """Ship the model (not rows) to another site, featurize there with the model's columns
    (computed as ``features`` says, by default the study's settings), and bring back
    aggregates only; ``threshold`` is the operating point set at the model's site, scored
    here as it stands."""
    features = features or study.features
    params = {"features": _features_cfg(features), "evaluation": _cfg(study.evaluation),
              "model_site": model_site, "eval_site": eval_site, "threshold": threshold}
    key = key_of("external", params, [trained.digest, model_matrix.digest, pull.digest, labels.digest])

    def compute(out: Path) -> dict:
        table, splits, _ = labels.result.load()
        columns = pd.read_parquet(model_matrix.result.columns_path)
        matrix = featurize(pull.result.events_dir, table, splits, out / "features", features,
                           codes_path=pull.result.codes_path, columns=columns, map_shards=_shards(study))
        # the record is all that is published of this ranking: it may carry the calibration groups
        record = external_validation(trained.result, matrix, n_boot=study.evaluation.bootstrap, seed=study.evaluation.seed,
                                     site=eval_site, threshold=threshold, curves=True,
                                     outcomes_path=labels.result.outcomes_path, events_dir=pull.result.events_dir)
        (out / "record.json").write_text(json.dumps(record, indent=1))
        return record

    return cache.run(f"external-{spec.name}-{model_site}", key, compute)


@task(name="temporal validation", cache_policy=NO_CACHE)
def temporal_task(site: SiteConfig, pull: Stage, spec: TaskSpec, study: Study, cache: StageCache) -> Stage:
    """Train on prediction times before ``temporal_from`` and test on those after."""
    cutoff = datetime.combine(study.validation.temporal_from, datetime.min.time())
    models = study.models.model_copy(update={"search": study.models.search.model_copy(update={"trials": 0})})
    params = {"task": spec.digest(), "cutoff": cutoff.isoformat(), "split_seed": study.split_seed,
              "features": _features_cfg(study.features), "models": _cfg(models), "evaluation": _cfg(study.evaluation),
              "executor": study.executor.kind}

    def compute(work: Path) -> dict:
        temporal = spec.model_copy(update={"temporal_split": TemporalSplit(held_out_from=cutoff)})
        labels = label_dataset(pull.result.events_dir, temporal, work, split_seed=study.split_seed)
        table, splits, attrition = labels.load()
        matrix = featurize(pull.result.events_dir, table, splits, work / "features", study.features,
                           codes_path=pull.result.codes_path, map_shards=_shards(study))
        with maybe_dask_client(study.executor) as client:
            if trainability(matrix):
                return {"skipped": trainability(matrix)}
            trained = train_models(matrix, work / "models", models, client=client)
        held = held_out_metrics(trained, study.evaluation)  # the numbers only: no SHAP or figures to discard
        summary = json.loads(trained.summary_path.read_text())
        development = {k: privacy.suppress(sum(summary[key].get(s, 0) for s in (schema.TRAIN, schema.TUNING)))
                       for k, key in (("rows", "rows"), ("events", "positives"))}
        crossing = privacy.suppress((attrition.get("crosses_cutoff") or {}).get("times", 0))
        return held | {"cutoff": cutoff.date().isoformat(), "development": development, "crosses_cutoff": crossing}

    return cache.run(f"temporal-{spec.name}", key_of("temporal", params, [pull.digest]), compute)


@task(name="network model", cache_policy=NO_CACHE)
def network_task(study: Study, spec: TaskSpec, built: dict, caches: dict[str, StageCache]) -> NetworkRun:
    """One model trained across every site that built ``spec`` without moving rows
    (``models.federated``): each site featurizes its rows in the network's shared columns;
    the network's champion, if any, is re-scored at each site on today's rows and each
    site checks its data for drift against its part of the champion's profile; unless
    the drift policy skips, the model visits the sites in turn (only the model and sums
    over 11+ rows, events and non-events cross), and each site then evaluates it on its
    own held-out rows as it would a shipped model (the row of the site's report) and as
    its own model (metrics, subgroups, SHAP, and its drift profile: the network report).
    The coordinator's model is kept in the first site's stage cache. Returns a
    ``NetworkRun``: its stages, or why no network model was trained
    (``models.federated.untrainable``, or the drift policy)."""
    names = list(built)
    threads = study.models.n_jobs or os.cpu_count() or 1
    shared = shared_columns([pd.read_parquet(built[n]["matrix"].result.columns_path) for n in names])
    columns = hashlib.sha256("\n".join(shared["name"]).encode()).hexdigest()[:16]
    features = {}
    for n in names:
        b = built[n]

        def compute(out: Path, b=b) -> FeatureMatrix:
            table, splits, _ = b["labels"].result.load()
            return featurize(b["pull"].result.events_dir, table, splits, out, study.features,
                             codes_path=b["pull"].result.codes_path, columns=shared, map_shards=_shards(study))

        key = key_of("network featurize", {"features": _features_cfg(study.features), "columns": columns},
                     [b["pull"].digest, b["labels"].digest])
        features[n] = caches[n].run(f"network-features-{spec.name}", key, compute)

    params = {"models": _cfg(study.models), "rounds_per_visit": study.validation.rounds_per_visit, "sites": names}
    train_key = key_of("network train", params, [features[n].digest for n in names])
    stage = f"network-model-{spec.name}"
    # The sites that train are the ones that were checked: under ``validation.site_processes``
    # their processes answer the check and the training, and stop once the model is made.
    # A model already made from these very features passed the same check then: no site
    # is asked again (nor a process started) to reuse it.
    with ExitStack() as stack:
        sites = []
        if not caches[names[0]].has(stage, train_key):
            sites = stack.enter_context(network_sites(study, {n: features[n].result for n in names}, threads))
            reason = untrainable(sites)
            if reason:
                return NetworkRun({}, reason)
        tracking.abandon_runs(train_key, tag="train_key")  # what a killed registration of this candidate left half-made
        champion, drift, used = network_champion(study, spec, built, caches, train_key)
        if drift["decision"]["action"] == "skip":
            return NetworkRun({}, f"the drift policy kept the network's champion v{champion.version} and trained no "
                              f"challenger ({'; '.join(drift['decision']['reasons'])})", champion, drift, train_key, used)

        def train(out: Path) -> dict:
            model = train_federated(sites, study.models, rounds_per_visit=study.validation.rounds_per_visit)
            model.save(out)
            return {"trees": model.n_trees, "calibration": model.calibrator.method}

        model = caches[names[0]].run(stage, train_key, train)
    stages = {}
    for n in names:

        def validate(out: Path, n=n) -> dict:
            network = FederatedModel.load(model.dir)
            trained = SiteRows(n, features[n].result, threads).write_trained(network, out / "models", study.models)
            evaluation = evaluate_and_explain(features[n].result, trained, out / "evaluation", study.evaluation, site=n,
                                              outcomes_path=built[n]["labels"].result.outcomes_path,
                                              events_dir=built[n]["pull"].result.events_dir)
            # This site's part of the model's drift profile (aggregates of 11+ rows), its
            # vocabulary the site's own: what tomorrow's rows here are compared with.
            X, rows, cols = features[n].result.load()
            importance = pd.read_parquet(evaluation.explanations.importance_path)
            profile = drift_check.reference_profile(X, rows, cols, importance, study.drift)
            profile["vocabulary"] = drift_check.vocabulary(pd.read_parquet(built[n]["matrix"].result.columns_path))
            (out / "profile.json").write_text(json.dumps(profile, indent=1))
            record = external_validation(trained, features[n].result, n_boot=study.evaluation.bootstrap,
                                         seed=study.evaluation.seed, site=n, events_dir=built[n]["pull"].result.events_dir)
            return record | {"network": {k: network.summary[k] for k in ("sites", "tuning_sites", "trees", "visits",
                                                                         "rounds_per_visit")}}

        key = key_of("network validation", {"evaluation": _cfg(study.evaluation), "drift": _cfg(study.drift)},
                     [model.digest, features[n].digest, built[n]["matrix"].digest])
        stages[n] = [features[n], model, caches[n].run(f"network-{spec.name}", key, validate)]
    return NetworkRun(stages, None, champion, drift, train_key, used)


@contextmanager
def network_sites(study: Study, matrices: dict[str, FeatureMatrix], threads: int):
    """The network's sites as its coordinator reaches them, for the trainability check and
    the training (``models.federated``): under ``validation.site_processes`` each in a
    process of its own that holds its rows (``models.site_process``; all start at once,
    then each is waited for, and all stop on leaving), else ``SiteRows`` in this process."""
    with ExitStack() as stack:
        if study.validation.site_processes:
            started = time.perf_counter()
            sites = [stack.enter_context(SiteProcess(n, m, threads, wait=False)) for n, m in matrices.items()]
            for site in sites:
                site.ready()
            log.info("network: a process of its own answers for each site (%s), its rows loaded in %.1f s",
                     ", ".join(matrices), time.perf_counter() - started)
        else:
            sites = [SiteRows(n, m, threads) for n, m in matrices.items()]
        yield sites


def network_champion(study: Study, spec: TaskSpec, built: dict, caches: dict[str, StageCache],
                     train_key: str) -> tuple[NetworkChampion | None, dict, dict[str, list[Stage]]]:
    """The network's champion re-scored at every site (its AUROC on the site's held-out
    rows, in its own columns) and each site's drift against its part of the champion's
    profile, combined into one action (``drift.combine``); only aggregates come back.
    Returns (champion or None, drift record, the stages each site used)."""
    names = list(built)
    info = tracking.champion_info(spec.name, tracking.NETWORK)
    if info is None:
        return None, {"compare": None, "decision": drift_check.decide(None, study.drift), "sites": {}}, {}
    version, tags = info
    if tags.get(f"{tracking.TAG}.train_key") == train_key:
        return NetworkChampion(version, {}, same=True), {"compare": None, "sites": {}, "decision": {
            "action": "retrain", "drifted": False,
            "reasons": [f"the network's champion v{version} was trained on these same features: nothing to compare"]}}, {}
    first = names[0]
    model = fetch_champion(spec.name, tracking.NETWORK, version, caches[first], f"network-champion-{spec.name}")
    features, notes = champion_settings(study, spec, version, model.result["provenance"])
    used: dict[str, list[Stage]] = {first: [model]}
    champion = TrainedModels(model.dir / "model")
    aurocs, sites, matrices = {}, {}, {}
    for n in names:
        b = built[n]
        matrix = featurize_stage(b["pull"], b["labels"], study, caches[n], name=f"network-champion-features-{spec.name}",
                                 columns=model, features=features)
        used.setdefault(n, []).append(matrix)
        # the site champion's stage name: the two champions of one study share the featurization
        codes = champion_vocabulary(b["pull"], b["labels"], study, features, caches[n], f"champion-vocabulary-{spec.name}")
        used[n] += [codes] if codes else []
        matrices[n] = matrix.result
        aurocs[n] = auroc_on(champion, matrix.result)
        sites[n] = drift_against(champion.dir / f"profile-{n}.json", version, matrix.result, b["matrix"], study,
                                 why_none="the site joined the network after it was trained",
                                 codes=codes and vocabulary_of_matrix(codes.result))
    decision = drift_check.combine({n: d["decision"] for n, d in sites.items()}, study.drift)
    content = model_content(champion, champion.dir / "columns.parquet")
    drift = {"compare": None, "decision": decision, "sites": sites, "champion_version": version}
    return NetworkChampion(version, aurocs, content=content, model=champion, matrices=matrices, notes=notes), drift, used


def champion_difference(study: Study, candidate: TrainedModels, matrix: FeatureMatrix, champion: TrainedModels,
                        champion_matrix: FeatureMatrix) -> dict | None:
    """``paired_auroc`` of the candidate against the champion at one site, or None (the
    reasons then say it could not be estimated) when it cannot be computed: under the
    default marginal rule it only informs, so it must not stop a publication."""
    try:
        return paired_auroc(candidate, matrix, champion, champion_matrix, n_boot=study.promotion.bootstrap,
                            seed=study.evaluation.seed)
    except ValueError as exc:
        log.warning("the paired AUROC difference against the champion could not be computed: %s", exc)
        return None


def champion_summary(study: Study, champion: ChampionCheck) -> dict | None:
    """The champion's held-out metrics on today's rows (``held_out_summary``), or None when
    they cannot be computed: they inform the reviewer, and must not stop a publication."""
    try:
        return held_out_summary(champion.model, champion.matrix, n_boot=study.evaluation.bootstrap,
                                seed=study.evaluation.seed)
    except ValueError as exc:
        log.warning("the champion's held-out metrics could not be computed: %s", exc)
        return None


CHAMPION_METRICS = ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "brier", "calibration_slope",
                    "calibration_in_the_large")


def champion_metrics(summary: dict | None) -> dict[str, float]:
    """The champion's held-out metrics on this run's rows, as MLflow metrics
    (``champion/held_out/*``: the compare view lines them up beside ``held_out/*``)."""
    return {f"champion/held_out/{k}": float(summary[k]) for k in CHAMPION_METRICS
            if summary and summary.get(k) is not None and math.isfinite(summary[k])}


def promotion_metrics(paired: dict | None, prefix: str = "promotion/") -> dict[str, float]:
    """The candidate's AUROC minus the champion's on the same held-out rows, as MLflow
    metrics (none without a champion, when withheld, or where not finite)."""
    names = {"difference": "auroc_difference", "ci_low": "auroc_difference_ci_low", "ci_high": "auroc_difference_ci_high"}
    return {prefix + name: float(paired[k]) for k, name in names.items()
            if paired and paired.get(k) is not None and math.isfinite(paired[k])}


def learning_curve_metrics(curve: dict | None) -> dict[str, list[tuple[int, float]]]:
    """The learning curve as stepped MLflow metrics: ``learning_curve/<learner>/<metric>``
    (held-out AUROC and AUPRC and their CIs, and ``apparent_auroc``), each a list of (step,
    value) with the step the percent of train subjects fitted on, so that MLflow charts it
    against the training size. Withheld and unfitted points are left out. ``learning_curve/rising``
    is 1 where the last step gained beyond chance, else 0, so that the runs where more data
    may help can be found in the compare view."""
    out: dict[str, list[tuple[int, float]]] = {}
    step = (curve or {}).get("last_step")
    if step:  # 1 where the last step gained beyond chance (``evaluation.learning_curve.rising``), at its share
        out["learning_curve/rising"] = [(int(round(step["to"])), float(rising(step)))]
    for point in (curve or {}).get("points") or []:
        if not point.get("fitted"):
            continue
        step = int(round(point["percent"]))
        for learner, held in point["held_out"].items():
            values = {k: held.get(k) for k in ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc")}
            values["apparent_auroc"] = point["apparent"][learner].get("auroc")
            for name, value in values.items():
                if value is not None and math.isfinite(value):
                    out.setdefault(f"learning_curve/{learner}/{name}", []).append((step, float(value)))
    return out


def logged(cache: StageCache, name: str, inputs: list[str], write) -> Stage:
    """An MLflow logging step as a stage: done once per content, and a run left half-made
    by a killed process is marked KILLED before it is logged again. ``write(key, folder)``
    may write files to keep (a report) into the stage's folder. A run completed by a
    process killed before the stage was marked done is reused, not logged twice."""
    key = key_of(name, {"tracking": tracking.current_uri()}, inputs)

    def compute(out: Path):
        tracking.abandon_runs(key)
        done = tracking.stage_result(key)
        if done is not None:  # logged by a process killed before it could mark the stage done
            log.info("%s: MLflow run %s was completed before the stage was marked done; reusing it", name, done[0])
            return done[1]
        return write(key, out)

    return cache.run(f"mlflow-{name}", key, compute)


# --- publication -------------------------------------------------------------------------


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(site: SiteConfig, study: Study, spec: TaskSpec, stages: dict[str, Stage], validations: list[dict],
                 champion: ChampionCheck | None, drift: dict, cache: StageCache) -> Stage:
    inputs = [stages[k].digest for k in ("pull", "labels", "matrix", "trained", "evaluation")]
    inputs += [json.dumps(v, sort_keys=True, default=str) for v in validations]
    inputs.append(json.dumps(stages.get("previous_pull"), sort_keys=True))  # the report compares with it
    # Not the champion nor the drift record: a candidate with the same content is published
    # once, whatever the registry says by the time of a rerun.
    key = key_of("publish", {"study": study.name, "promotion": _cfg(study.promotion), "tracking": tracking.current_uri(),
                             "reporting": study.reporting.for_task(spec.name)}, inputs)

    def compute(out: Path) -> SiteResult:
        return publish(site, study, spec, stages, validations, champion, drift, out, key)

    stage = cache.run(f"publish-{spec.name}", key, compute, digest_of=lambda rel: rel.suffix == ".json")
    latest = site.workdir / "reports" / spec.name / "report.html"  # a stable path to the latest report
    latest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(stage.result.report_path, latest)
    return stage


def publish(site, study, spec, stages, validations, champion, drift, out: Path, stage_key: str) -> SiteResult:
    """Open the (site, task) MLflow run, apply the promotion rule against the champion
    (and the drift policy), register the model, render the report with the decision, and
    log it all to the run."""
    done = tracking.completed_run(stage_key)
    if done is not None:  # published by a run killed before it could mark the stage done
        return recover_published(site, spec, done, out)
    pull: PullResult = stages["pull"].result
    labels: LabelSet = stages["labels"].result
    matrix: FeatureMatrix = stages["matrix"].result
    trained: TrainedModels = stages["trained"].result
    evaluation: Evaluation = stages["evaluation"].result
    action = drift["decision"]["action"]
    run_id = tracking.start_site_run(
        experiment=tracking.experiment_name(spec.name), site=site.name,
        run_name=f"{site.name}-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        tags={"task": spec.name, "task_digest": spec.digest(), "validation_design": "internal",
              "code_version": code_version(), "study": study.name, "stage_key": stage_key,
              "train_key": stages["trained"].key, "drift_action": action},
    )
    log.info("publish %s/%s: MLflow run %s opened", site.name, spec.name, run_id)
    shape = json.loads((matrix.dir / "shape.json").read_text())
    digest = data_digest(stages["pull"])
    record = evaluation.load_metrics()
    held = record["held_out"][PRIMARY]
    compared = {"version": champion.version, "auroc": champion.auroc} if champion else None
    name = tracking.registered_name(spec.name, site.name)
    # A model is registered once: when these trees already are a version (tonight's
    # validations changed, not the model), this run refreshes the report and refers to it.
    existing = tracking.registered_with(spec.name, site.name, stages["trained"].key)
    same = "trained on these same features"
    if (existing is None and champion is not None
            and model_content(trained, matrix.columns_path) == model_content(champion.model, champion.matrix.columns_path)):
        # Trained again (the code or the settings changed) with the very same result: the
        # champion, not a new version judged against itself.
        existing = (champion.version, tracking.version_aliases(spec.name, site.name, champion.version))
        same = "trained again with the same result (the same trees, calibrator and columns)"
    if existing is not None and champion is not None and existing[0] == champion.version:
        promotion = {"promoted": False, "unchanged": True, "champion_version": champion.version, "reasons": [
            f"this model is champion v{champion.version} itself, {same}: nothing new to register"]}
    else:
        if compared is not None:  # the candidate minus the champion on the same held-out rows, one bootstrap
            compared["paired"] = champion_difference(study, trained, matrix, champion.model, champion.matrix)
        promotion = (decide(held, compared, study.promotion)  # held["constant_risk"]: evaluation.evaluate.risk_spread
                     | {"paired": (compared or {}).get("paired")})
        if champion is not None:  # the champion beside the candidate, on the same held-out rows
            promotion["champion_metrics"] = champion_summary(study, champion)
            promotion["reasons"] = [*promotion["reasons"], *champion.notes]
    if action == "alert":
        drifted = [r for r in drift["decision"]["reasons"] if "drifted" in r or "drift" in r][:3]
        promotion = promotion | {"promoted": False, "reasons": [
            "drift alert: the data drifted from the champion's beyond the drift policy, so a person reviews before any "
            f"promotion ({'; '.join(drifted) or 'see the drift section'})", *promotion["reasons"]]}
    if promotion.get("unchanged"):
        decision = f"the champion, unchanged: {'; '.join(promotion['reasons'])}."
    elif promotion["promoted"]:
        decision = f"promoted to champion: {'; '.join(promotion['reasons'])}."
    else:
        stays = f"champion stays v{promotion['champion_version']}" if promotion["champion_version"] else "no champion yet"
        decision = f"kept as challenger ({stays}): {'; '.join(promotion['reasons'])}."
    X, rows, columns = matrix.load()
    importance = pd.read_parquet(evaluation.explanations.importance_path)
    profile = drift_check.reference_profile(X, rows, columns, importance, study.drift)
    profile_path = out / "profile.json"
    profile_path.write_text(json.dumps(profile, indent=1))
    del X
    if existing is None:
        name, version, aliases = tracking.register_model(
            run_id=run_id, task=spec.name, site=site.name, xgb_model_path=trained.xgboost_path,
            n_features=shape["columns"], promote=promotion["promoted"], decision=decision,
            tags={"train_key": stages["trained"].key},
            offset_path=trained.offset_path if trained.offset_path.exists() else None,
            blend_path=trained.blend_path if trained.blend_path.exists() else None,
            calibration_path=trained.calibration_path,
        )
    else:
        version, aliases = existing
        if promotion["promoted"]:
            aliases = tuple(sorted({*aliases, "champion"}))
        if not promotion.get("unchanged"):
            decision = f"{decision} These trees were registered before: this run refreshes their report only."
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
        validations=validations, promotion=promotion, drift=drift, reporting=study.reporting.for_task(spec.name),
        previous_pull=stages.get("previous_pull"),
    )
    report_path = write_report(context, out / "report.html")
    metrics = tracking.flat_metrics(record["held_out"], PRIMARY) | tracking.evaluation_metrics(held)
    metrics |= tracking.gap_metrics(record.get("subgroup_gaps"))
    metrics["train/best_iteration"] = float(training["xgboost"]["best_iteration"])
    metrics["promotion/promoted"] = float(promotion["promoted"])
    metrics |= promotion_metrics(promotion.get("paired"))
    metrics |= champion_metrics(promotion.get("champion_metrics"))
    metrics |= drift_check.drift_metrics(drift)
    params = run_params(study, spec, site.name, shape, training)
    artifacts = {"report.html": report_path, "metrics.json": evaluation.metrics_path}
    artifacts |= {f"figures/{f.name}": f for f in sorted((evaluation.dir / "figures").glob("*.png"))}
    artifacts["shap/importance.parquet"] = evaluation.explanations.importance_path
    artifacts |= {f"{tracking.MODEL_INPUTS}/{k}": v for k, v in model_inputs(trained, matrix, profile_path).items()}
    note = (
        f"{spec.name} at site {site.name}: XGBoost held-out AUROC {tracking.auroc_text(metrics)}, "
        f"AUPRC {tracking.auprc_text(metrics)}. {decision}"
    )
    tracking.log_records(
        run_id=run_id, params=params, metrics=metrics, artifacts=artifacts,
        dicts={"data/pull_summary.json": tracking.pull_summary(pull_report), "data/quality.json": quality,
               "data/attrition.json": published_attrition(attrition), "validation/promotion.json": promotion,
               "validation/external.json": {"validations": validations}, "validation/drift.json": drift,
               "config/study.json": json.loads(study.model_dump_json()),
               "config/task.json": json.loads(spec.model_dump_json())},
        note=note, steps=learning_curve_metrics(record.get("learning_curve")),
        tags={"data_digest": digest, "promoted": str(promotion["promoted"]).lower(),
              "drift_alert": str(action == "alert").lower(), "registered_version": version,
              "decision": decision, "sample_size_warning": str(bool(training.get("warnings"))).lower()},
    )
    tracking.log_trials(run_id, training.get("search", {}).get("trials", []))
    for split in SPLITS:
        # The feature matrix's digest: it changes with the data, the labels, the splits and the features.
        tracking.log_dataset(run_id, name=f"{site.name}/{spec.name}/{split}", digest=f"{stages['matrix'].digest[:16]}-{split}",
                             source=matrix.dir, context=SPLIT_CONTEXT[split])
    if promotion["promoted"]:  # last, so that a killed run never leaves the alias on a half-made version
        tracking.set_champion(name, version)
    tracking.finish_run(run_id)
    return SiteResult(
        site.name, spec.name, "published", run_id=run_id, experiment=tracking.experiment_name(spec.name), model_name=name,
        version=version, aliases=aliases, decision=decision, report_path=report_path, metrics=metrics, drift=drift,
    )


def recover_published(site: SiteConfig, spec: TaskSpec, run, out: Path) -> SiteResult:
    """The result of a publication whose MLflow run was completed (tagged complete, its
    model registered) by a process killed before it marked the stage done: read back
    from MLflow, so that the resumed run neither logs a second run nor registers a
    second model version."""
    import mlflow

    run_id = run.info.run_id
    client = mlflow.MlflowClient()

    def fetch(path: str) -> Path:  # a file artifact lands in out/ under its own name
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(out)))

    report_path = fetch("report.html")
    promotion = json.loads(fetch("validation/promotion.json").read_text())
    drift = json.loads(fetch("validation/drift.json").read_text())
    fetch(f"{tracking.MODEL_INPUTS}/profile.json")  # lands as out/profile.json, as publish writes it
    name = tracking.registered_name(spec.name, site.name)
    version = run.data.tags.get(f"{tracking.TAG}.registered_version")  # its own, or the same trees' earlier one
    if version is None:  # a run logged before the tag existed registered its own version
        (found,) = client.search_model_versions(f"run_id = '{run_id}'")
        version = str(found.version)
    aliases = tuple(sorted(client.get_model_version(name, version).aliases))
    log.info("publish %s/%s: MLflow run %s was completed before the stage was marked done; reusing it",
             site.name, spec.name, run_id)
    return SiteResult(
        site.name, spec.name, "published", run_id=run_id, experiment=tracking.experiment_name(spec.name),
        model_name=name, version=version, aliases=aliases, decision=promotion["decision"],
        report_path=report_path, metrics=dict(run.data.metrics), drift=drift,
    )


SPLITS = ("train", "tuning", "held_out")
SPLIT_CONTEXT = {"train": "training", "tuning": "validation", "held_out": "test"}  # mlflow.data contexts


def data_digest(pull: Stage) -> str:
    """The ``data_digest`` tag of every run on a site's data: its pull's content digest."""
    return pull.digest[:16]


def network_digest(built: dict) -> str:
    """The ``data_digest`` tag of the network's own runs: a digest of its sites' data digests."""
    return hashlib.sha256(" ".join(data_digest(b["pull"]) for b in built.values()).encode()).hexdigest()[:16]


def run_params(study: Study, spec: TaskSpec, site: str, shape: dict, training: dict) -> dict[str, object]:
    """A run's params, the same keys whatever its validation design: the task, the
    features (``shape``: the matrix's ``shape.json``) and the make-up of the model
    evaluated (``training``: its ``training.json``)."""
    xgb = training["xgboost"]
    return {
        "task": spec.name, "site": site, "gap_days": spec.gap_days, "horizon_days": spec.horizon_days,
        "windows": ",".join(study.features.windows), "aggs": ",".join(study.features.aggs),
        "min_code_subjects": study.features.min_code_subjects, "n_features": shape["columns"],
        "l1_C": (training.get("l1_logistic") or {"C": "none"})["C"], "bootstrap": study.evaluation.bootstrap, "split_seed": study.split_seed,
        "calibration": training["calibration"]["method"], "scale_pos_weight": xgb["scale_pos_weight"],
        "tree_count": (xgb.get("tree_count") or {"method": "tuning"})["method"],
        "offset": (xgb.get("offset") or {"method": "none"})["method"],
        "blend": (xgb.get("blend") or {"method": "none"})["method"],
        "blend_weight": (xgb.get("blend") or {"weight": 0.0})["weight"],
        "blend_guard": ((xgb.get("blend") or {}).get("guard") or {}).get("metric", "none"),
        "blend_rule": study.models.blend_rule,
        "leaf_min_cell": study.models.leaf_min_cell, "leaf_move_splits": study.models.leaf_move_splits,
        "leaves_released": _leaves_released(xgb.get("release"), bool(training.get("federated"))),
        "features_used": (training.get("sample_size") or {}).get("features_used", "none"),
        # the search as it ran for this model (none in a temporal design, which refits its settings)
        "search_trials": len((training.get("search") or {}).get("trials") or []),
        "search_objective": (training.get("search") or {}).get("objective") or "none",
        "search_timeout_s": study.models.search.timeout_s,
        **{f"xgb_{k}": v for k, v in xgb["params"].items()},
    }


def _leaves_released(release: dict | None, network: bool) -> str:
    """The trees' leaves after and before the rule of 11 (``models.release``), as a param
    the compare view lines up: "1,323 of 1,704"; a network model's are released per site."""
    if release:
        return f"{release['leaves_after']:,} of {release['leaves_before']:,}"
    return "per site" if network else "none"


def code_version() -> str:
    version = metadata.version("forewarn")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


def model_inputs(trained: TrainedModels, matrix: FeatureMatrix, profile_path: Path) -> dict[str, Path]:
    """What a run keeps of its model for the next night (the champion's inputs, as
    ``tracking.download_inputs`` downloads them into a ``TrainedModels`` folder): the
    trees, their offset and blend when they have them, the calibrator, the columns, the baselines
    and the drift profile, under the names ``TrainedModels`` reads."""
    inputs = {"xgboost.json": trained.xgboost_path, "calibration.json": trained.calibration_path,
              "columns.parquet": matrix.columns_path, "l1_logistic.json": trained.l1_path,
              "age_sex.json": trained.age_sex_path, "profile.json": profile_path}
    for part in (trained.offset_path, trained.blend_path):
        if part.exists():
            inputs[part.name] = part
    return inputs


def model_content(trained: TrainedModels, columns_path: Path) -> str:
    """A digest of what a model scores with: its trees, their offset and blend, its
    calibrator and its columns' names. Two models with the same content score every row
    alike, whatever code or settings trained them."""
    h = hashlib.sha256()
    for path in (trained.xgboost_path, trained.offset_path, trained.blend_path, trained.calibration_path):
        h.update(path.name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"-") + b"\0")
    h.update("\n".join(map(str, pd.read_parquet(columns_path, columns=["name"])["name"])).encode())
    return h.hexdigest()


def temporal_note(record: dict, horizon_days: int) -> str:
    """The temporal row's note: what was trained on, and what the cutoff left out."""
    note = (f"a refit of this site's model (its settings, no search) on the times whose {horizon_days}-day horizon ends "
            f"by {record['cutoff']}")
    development = record.get("development")
    if development:  # since session 25
        note += (f" ({privacy.shown(development['rows'])} train and tuning rows, "
                 f"{privacy.shown(development['events'])} with the outcome; "
                 f"{privacy.shown(record.get('crosses_cutoff'))} times left out whose horizon crosses the cutoff)")
    return note + ", tested on the times from then on"


# What a report's validation row shows of a design's record (``evaluation.report._validations``).
ROW_KEYS = ("auroc", "auroc_ci_low", "auroc_ci_high", "model_based_auroc", "auprc", "brier", "calibration_slope",
            "calibration_in_the_large", "withheld", "n", "events")


def log_temporal(study: Study, spec: TaskSpec, site: str, stage: Stage, pull: Stage, stage_key: str, out: Path) -> dict:
    """One MLflow run for the temporal validation at ``site`` (``stage``: ``temporal_task``'s
    folder, holding its labels, matrix and models): the metric names, params and tags of
    an internal run, the design in the ``validation_design`` tag, and its own report
    (``design_report``, written into ``out``)."""
    record = stage.result
    features = stage.dir / "features"
    shape = json.loads((features / "shape.json").read_text())
    training = json.loads(TrainedModels(stage.dir / "models").summary_path.read_text())

    def artifacts(run_id: str) -> dict[str, Path]:
        return design_report(study, spec, "temporal", site=site, model_site=site, record=record,
                             labels=LabelSet(stage.dir, spec.name), shape=shape, features=study.features, pull=pull,
                             run_id=run_id, out=out)

    def row(run_id: str) -> dict:
        return {"design": "temporal", "train_site": site, "eval_site": site, "run_id": run_id,
                **{k: record.get(k) for k in ROW_KEYS},
                "recalibrated": None, "note": temporal_note(record, spec.horizon_days)}

    run_id = tracking.log_run(
        experiment=tracking.experiment_name(spec.name), run_name=f"{site}-temporal-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        tags={"site": site, "task": spec.name, "task_digest": spec.digest(), "validation_design": "temporal",
              "data_digest": data_digest(pull), "code_version": code_version(), "study": study.name,
              "temporal_from": record["cutoff"], "stage_key": stage_key},
        metrics=tracking.evaluation_metrics(record, model=PRIMARY), params=run_params(study, spec, site, shape, training),
        dicts={"validation/temporal.json": record},
        datasets=[{"name": f"{site}/{spec.name}/temporal/{split}", "digest": f"{stage.digest[:16]}-{split}",
                   "source": features, "context": SPLIT_CONTEXT[split]} for split in SPLITS],
        note=f"{spec.name} at {site}: trained on prediction times before {record['cutoff']}, tested on those after.",
        artifacts=artifacts, result=row,
    )
    return row(run_id)


def design_report(study: Study, spec: TaskSpec, design: str, *, site: str, model_site: str, record: dict,
                  labels: LabelSet, shape: dict, features: FeatureConfig, pull: Stage, run_id: str,
                  out: Path) -> dict[str, Path]:
    """The report of one run of a validation design (``evaluation.report.validation_context``,
    ``design`` ``external`` or ``temporal``) at ``site``, of ``model_site``'s model: the
    run's ``report.html`` artifact. Aggregates only, under the rule of 11 at ``site``: what
    its MLflow run holds already, with ``site``'s participants' flow."""
    _, _, attrition = labels.load()
    context = validation_context(
        site=site, task=spec, record=record, attrition=attrition, design=design,
        model={"name": tracking.registered_name(spec.name, model_site), "version": None, "site": model_site,
               "study": study.name, "run_id": None, "ref": None},
        features={"columns": f"{shape['columns']:,}", "windows": ", ".join(features.windows),
                  "aggs": ", ".join(features.aggs)},
        data_digest=data_digest(pull), code_version=code_version(),
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), mlflow_run_id=run_id)
    out.mkdir(parents=True, exist_ok=True)
    return {"report.html": write_report(context, out / "report.html", template="validation.html.j2")}


def log_external(study: Study, spec: TaskSpec, model_site: str, eval_site: str, stage: Stage, trained: Stage,
                 pull: Stage, labels: Stage, stage_key: str, out: Path, model_key: str = "") -> dict:
    """One MLflow run per (model site, validating site): aggregates only. ``stage`` is
    ``external_task``'s folder (the validating site's rows with the model's columns),
    ``trained`` the shipped model, ``pull`` the validating site's pull, ``model_key`` its
    train key (tagged ``forewarn.model_train_key``: the registered version's
    ``forewarn.train_key``, so the validation of a champion at a site can be found). The
    shipped model's metrics have the internal run's names (``held_out/auroc``, ...), the
    recalibrated model's ``held_out/recalibrated/<metric>``; the design is the
    ``validation_design`` tag. The run holds its own report (``design_report``, written
    into ``out``), with ``eval_site``'s participants' flow from its ``labels``."""
    shape = json.loads((stage.dir / "features" / "shape.json").read_text())

    def artifacts(run_id: str) -> dict[str, Path]:
        return design_report(study, spec, "external", site=eval_site, model_site=model_site, record=stage.result,
                             labels=labels.result, shape=shape, features=study.features, pull=pull, run_id=run_id,
                             out=out)

    return log_shipped(
        study, spec, design="external", train_site=model_site, eval_site=eval_site, stage=stage, features=stage.dir / "features",
        training=json.loads(trained.result.summary_path.read_text()), pull=pull, stage_key=stage_key,
        run_name=f"{model_site}-model-at-{eval_site}", dataset=f"{eval_site}/{spec.name}/{model_site}-columns",
        note=f"{model_site}'s {spec.name} model evaluated at {eval_site} (held-out rows there; only aggregates returned).",
        row_note="model shipped to the validating site; metrics on its held-out rows",
        tags={"model_train_key": model_key} if model_key else None, artifacts=artifacts)


def network_site_row(stage: Stage, site: str) -> dict:
    """The network's model at ``site`` as the other sites' network reports show it (their
    validation table and "Site" subgroup): the aggregates ``site`` publishes of it anyway,
    under the rule of 11 there. The "Site" level is the one ``site``'s own network report
    shows (its evaluation's, at its own operating point: the study's alert budget, its
    threshold set on that site's tuning split). The note names that site's own MLflow run
    of it by its tags and the digest of the rows it was evaluated on (``log_shipped``'s
    dataset digest), as it may be logged after this site's."""
    evaluated = Evaluation(stage.dir / "evaluation").load_metrics()
    row = validation_row(stage.result, design="network", train_site=" + ".join(stage.result["network"]["sites"]),
                         eval_site=site, subgroups=evaluated.get("subgroups") or [],
                         note=f"the same model on {site}'s held-out split (only these aggregates came back); its "
                              f"MLflow run there: site {site}, validation_design network, dataset digest "
                              f"{stage.digest[:16]}-held_out")
    if row["site_subgroup"] is not None:  # the alert threshold its sensitivity, PPV, ... are at: that site's own
        point = evaluated.get("subgroup_threshold") or {}  # and the alert budget it was set for there
        row["site_subgroup"] = dict(row["site_subgroup"], threshold=point.get("threshold"),
                                    alert_budget=point.get("alert_budget"))
    return row


def validation_row(record: dict, *, design: str, train_site: str, eval_site: str, note: str,
                   subgroups: list[dict] | None = None, run_id: str | None = None) -> dict:
    """A report's validation row of ``external_validation``'s ``record``: the model as
    shipped, after local recalibration, and its "Site" subgroup level (from ``subgroups``,
    by default the record's own)."""
    shipped = record["as_shipped"]
    subgroups = record.get("subgroups") if subgroups is None else subgroups
    return {"design": design, "train_site": train_site, "eval_site": eval_site, "run_id": run_id,
            **{k: shipped.get(k) for k in ROW_KEYS},
            "recalibrated": recalibrated_row(record),
            "site_subgroup": next((g for g in subgroups or [] if g["group"] == "site"), None),
            "note": note}


def recalibrated_row(record: dict) -> dict | None:
    """``external_validation``'s ``record`` after recalibration on the validating site's
    tuning split, as a report's row shows it (with the method chosen there); None when the
    split was too small to recalibrate on."""
    recal = record.get("recalibrated")
    if not recal:
        return None
    return {k: recal.get(k) for k in ("auroc", "auprc", "brier", "calibration_slope", "calibration_in_the_large")} | {
        "method": (record.get("recalibration") or {}).get("method")}


def log_network(study: Study, spec: TaskSpec, site: str, stage: Stage, features: Stage, built: dict, stage_key: str,
                out: Path, registered: dict, drift: dict, others: list[dict] | None = None) -> dict:
    """One MLflow run per site for the network design (``network_task``): the model trained
    across the sites, evaluated on this site's held-out rows (``features``: this site's
    matrix in the network's columns); names as ``log_external``'s. The run also holds the
    network model's full report at this site (``out / "report.html"``, copied to
    ``reports/<task>/network-report.html``), with its figures and metrics, the registry's
    decision on the model (``registered``: ``network_publish``'s record) and the drift
    check (``drift``: this site's comparison, the network's action). ``others``: the
    model at the other sites (``network_site_row``), for the report's validation table
    and "Site" subgroup."""
    sites = stage.result["network"]["sites"]
    trained, evaluation = TrainedModels(stage.dir / "models"), Evaluation(stage.dir / "evaluation")
    training = json.loads(trained.summary_path.read_text())
    pull: PullResult = built["pull"].result

    def artifacts(run_id: str) -> dict[str, Path]:
        _, _, attrition = built["labels"].result.load()
        context = report_context(
            site=site, task=spec, attrition=attrition, pull_report=json.loads(pull.report_path.read_text()) | {"demo": study.demo},
            features_shape=json.loads((features.dir / "shape.json").read_text()), feature_config=study.features,
            training=training, evaluation=evaluation, code_version=code_version(), data_digest=data_digest(built["pull"]),
            quality=json.loads(pull.quality_path.read_text()), generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            mlflow_run_id=run_id, decision=registered["decision"],
            promotion=registered if registered.get("run_id") else None, drift=drift, validations=others,
            recalibrated=recalibrated_row(stage.result), reporting=study.reporting.for_task(spec.name))
        report = write_report(context, out / "report.html")
        workdir = next(s.workdir for s in study.sites if s.name == site)
        latest = workdir / "reports" / spec.name / "network-report.html"
        latest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report, latest)
        files = {"report.html": report, "metrics.json": evaluation.metrics_path,
                 "shap/importance.parquet": evaluation.explanations.importance_path}
        return files | {f"figures/{f.name}": f for f in sorted((evaluation.dir / "figures").glob("*.png"))}

    version = registered.get("version")
    where = (f"{registered.get('name')} v{version}, {'champion' if registered.get('promoted') else 'challenger'}"
             if registered.get("run_id") else registered["decision"])
    return log_shipped(
        study, spec, design="network", train_site=" + ".join(sites), eval_site=site, stage=stage, features=features.dir,
        training=training, pull=built["pull"], stage_key=stage_key, artifacts=artifacts,
        run_name=f"network-model-at-{site}", dataset=f"{site}/{spec.name}/network-columns",
        note=f"{spec.name}: one model trained across {', '.join(sites)} without moving rows (cyclic boosting), "
             f"evaluated on {site}'s held-out rows (only aggregates returned); its full report is the run's report.html. "
             f"Registry: {registered['decision']}",
        row_note=f"one model trained across {len(sites)} sites without moving rows; metrics on this site's held-out rows; "
                 f"registry: {where}; its full report: reports/{spec.name}/network-report.html",
        tags={"network_version": str(version)} if version else None)


def log_shipped(study: Study, spec: TaskSpec, *, design: str, train_site: str, eval_site: str, stage: Stage, features: Path,
                training: dict | None, pull: Stage, stage_key: str, run_name: str, dataset: str, note: str, row_note: str,
                artifacts=None, tags: dict[str, str] | None = None, params: dict[str, object] | None = None,
                row_fields: dict[str, str] | None = None) -> dict:
    """The MLflow run and report row of a model evaluated at ``eval_site`` as shipped there
    (``external_validation``'s record in ``stage``, the matrix it was evaluated on in
    ``features``). Its params are ``run_params`` of ``training``, or ``params`` as given;
    ``row_fields`` replace the row's own (its design and model, in the report)."""
    record = stage.result
    shipped, recal = record["as_shipped"], record.get("recalibrated")
    metrics = tracking.evaluation_metrics(shipped, model=PRIMARY)
    if recal:
        metrics |= tracking.evaluation_metrics(recal, prefix=f"{tracking.HELD_OUT}/recalibrated")
    shape = json.loads((features / "shape.json").read_text())
    used = ("held_out", "tuning") if recal else ("held_out",)  # the calibrator is fitted on the tuning rows

    def row(run_id: str) -> dict:
        # its "Site" level: the model as shipped, at its own site's threshold
        return validation_row(record, design=design, train_site=train_site, eval_site=eval_site, note=row_note,
                              run_id=run_id) | (row_fields or {})

    run_id = tracking.log_run(
        experiment=tracking.experiment_name(spec.name), run_name=f"{run_name}-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        tags={"site": eval_site, "train_site": train_site, "task": spec.name, "task_digest": spec.digest(),
              "validation_design": design, "data_digest": data_digest(pull), "code_version": code_version(),
              "study": study.name, "stage_key": stage_key, **(tags or {})},
        metrics=metrics, params=params if params is not None else run_params(study, spec, eval_site, shape, training),
        dicts={f"validation/{design}.json": record},
        datasets=[{"name": f"{dataset}/{split}", "digest": f"{stage.digest[:16]}-{split}",
                   "source": features, "context": SPLIT_CONTEXT[split]} for split in used],
        note=note, artifacts=artifacts, result=row,
    )
    return row(run_id)


def log_drift_only(study: Study, spec: TaskSpec, site: str, drift: dict, digest: str, stage_key: str) -> str:
    """A run that records a drift check after which the policy skipped retraining
    (``site`` ``network`` for the network's model; ``digest``: the data's)."""
    return tracking.log_run(
        experiment=tracking.experiment_name(spec.name), run_name=f"{site}-drift-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        tags={"site": site, "task": spec.name, "task_digest": spec.digest(), "validation_design": "drift",
              "data_digest": digest, "code_version": code_version(), "study": study.name, "stage_key": stage_key,
              "drift_action": drift["decision"]["action"]},
        metrics=drift_check.drift_metrics(drift), dicts={"validation/drift.json": drift},
        note=f"{spec.name} at {site}: drift check; policy action {drift['decision']['action']} "
             f"({'; '.join(drift['decision']['reasons'])}).",
        result=lambda run_id: {"run_id": run_id},
    )


# --- the flow ---------------------------------------------------------------------------------


@contextmanager
def site_locks(study: Study):
    """One run per site work folder at a time (a killed run's lock dies with it)."""
    with ExitStack() as stack:
        for site in sorted(study.sites, key=lambda s: str(s.workdir)):
            site.workdir.mkdir(parents=True, exist_ok=True)
            fh = stack.enter_context((site.workdir / ".forewarn.lock").open("w"))
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(
                    f"another Forewarn run is using site {site.name}'s work folder {site.workdir}; "
                    "wait for it to finish (runs of one study do not overlap)."
                ) from None
            fh.write(str(os.getpid()))
            fh.flush()
        yield


class SitesFailed(RuntimeError):
    """Raised at the end of a run in which some (site, task) failed; ``results`` holds
    every site's result, the failed ones with their reasons."""

    def __init__(self, message: str, results: list[SiteResult]) -> None:
        super().__init__(message)
        self.results = results

    def __reduce__(self):
        return (SitesFailed, (str(self), self.results))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500]


@flow(name="forewarn-nightly", log_prints=False)
def nightly(study: Study):
    """Run the whole pipeline once for every site and task of ``study``: internal
    validation per site, external validation of each site's model at the others,
    temporal validation when configured, the drift policy, the promotion rule and
    publication. Finished stages are reused (see ``forewarn.flows.cache``). Returns the
    list of ``SiteResult``; when a site or a (site, task) failed, the run ends Failed by
    raising ``SitesFailed`` (which carries every result) after all other work is done."""
    logger = get_run_logger()
    tracking.configure(study.tracking.uri, study.tracking.artifact_root)
    specs = [load_task(t) for t in study.tasks]
    study.reporting.check_tasks([spec.name for spec in specs])
    caches = {site.name: StageCache(site.workdir / "stages", enabled=study.cache.enabled, site=site.name) for site in study.sites}
    results: list[SiteResult] = []
    used: dict[str, list[Stage]] = {site.name: [] for site in study.sites}
    with site_locks(study):
        pull = pull_task.with_options(retries=study.retries.attempts, retry_delay_seconds=study.retries.delays_seconds)
        n_parts = study.executor.pull_parts
        parts = [None] if n_parts == 1 else [(k, n_parts) for k in range(n_parts)]
        futures = {site.name: [pull.submit(site, study.demo, caches[site.name], part) for part in parts]
                   for site in study.sites}
        pulls: dict[str, Stage] = {}
        site_pulls: dict[str, Stage] = {}  # every pull that succeeded, held sites' included: worklists stay at the site
        earlier: dict[str, dict | None] = {}  # each site's previous pull with other data
        enter: dict[str, Callable[[], None] | None] = {}  # each site's entry in its people ledger (records.people)
        for site in study.sites:
            try:
                stages = [future.result() for future in futures[site.name]]
                used[site.name] += stages
                pulls[site.name] = stages[0] if n_parts == 1 else merge_task(site, stages, caches[site.name])
                if n_parts > 1:
                    used[site.name].append(pulls[site.name])
            except Exception as exc:  # noqa: BLE001 - one site failing keeps the others' work
                reason = f"pull failed: {_reason(exc)}"
                logger.error("site %s: %s", site.name, reason)
                results += [SiteResult(site.name, spec.name, "failed", reason=reason) for spec in specs]
                continue
            site_pulls[site.name] = pulls[site.name]
            reason, enter[site.name] = people_gate(site, pulls[site.name], demo=study.demo)
            if reason:
                logger.warning("site %s: held: %s", site.name, reason)
                results += [SiteResult(site.name, spec.name, "held", reason=reason) for spec in specs]
                del pulls[site.name]
                continue
            try:  # a comparison that only informs must not fail the site
                earlier[site.name] = previous_pull(site, pulls[site.name])
                if earlier[site.name] is not None:
                    now = json.loads(pulls[site.name].result.report_path.read_text())
                    for c in (c for c in pull_changes(earlier[site.name], now) if c["flagged"]):
                        logger.warning("site %s: %s kept %s rows, a change of %s or more since the previous pull (%s), "
                                       "or a table new or emptied: check the source", site.name, c["table"],
                                       f"{c['now']:,}", f"{PULL_CHANGE_ALERT:.0%}", earlier[site.name]["date"])
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("site %s: no comparison with the previous pull: %s", site.name, _reason(exc))
                earlier[site.name] = None
        registered = resolve_registered(study, specs, logger)
        for spec in specs:
            # A site's night enters its ledger when its first task passes its own gate, before
            # anything of it leaves: a site whose every task is held published nothing, and
            # its night is no baseline.
            results += run_task(study, spec, pulls, caches, used, logger, earlier, enter=enter, registered=registered)
        # each site's worklists (or, with worklists off, the removal of an earlier night's)
        try:
            notes = worklists(study, specs, site_pulls, caches, used, logger)
        except Exception as exc:  # noqa: BLE001 - the summary and the prune still run; the run ends Failed
            logger.error("the worklists failed (%s)", type(exc).__name__)  # its text may count people: its kind only
            notes = {(site.name, spec.name): (f"worklist failed ({type(exc).__name__}) before it was made", True)
                     for site in study.sites for spec in specs} if study.worklist.enabled else {}
        results = with_worklists(results, notes)
        for site in study.sites:
            prune(caches[site.name], used[site.name], keep_runs=study.cache.keep_runs)
    artifact.publish_summary(study, results)
    raise_if_failed(results)
    return results


def raise_if_failed(results: list[SiteResult]) -> None:
    """``SitesFailed`` naming each (site, task) that failed, or whose worklist did."""
    failed = [r for r in results if r.status == "failed" or r.worklist_failed]
    if failed:
        message = "; ".join(f"{r.site}/{r.task}: {r.reason if r.status == 'failed' else r.worklist}" for r in failed)
        raise SitesFailed(f"{len(failed)} of {len(results)} site-task runs failed: {message}"[:2000], results)


def with_worklists(results: list[SiteResult], notes: dict[tuple[str, str], tuple[str, bool]]) -> list[SiteResult]:
    """``results`` with each (site, task)'s worklist note on its result: the study's own
    (published, skipped, held or failed), else a registered model's validation there. A
    note with no result of its (site, task) is left to the log (a task the study dropped),
    unless the worklist failed: that gets a result of its own, so the run fails on it."""
    out, placed = list(results), set()
    for own in (True, False):
        for i, r in enumerate(out):
            key = (r.site, r.task)
            if key in notes and key not in placed and own == (r.status in ("published", "skipped", "held", "failed")):
                out[i] = replace(r, worklist=notes[key][0], worklist_failed=notes[key][1])
                placed.add(key)
    for (site, name), (note, failed) in notes.items():
        if (site, name) not in placed and failed:
            out.append(SiteResult(site, name, "skipped", reason="no result of the study's tonight", worklist=note,
                                  worklist_failed=True))
    return out


def deid_fingerprint(site: SiteConfig, demo: bool) -> str:
    """A site's de-identification as its people ledger keeps it: a keyed fingerprint of
    the secret (never the secret) and the date shift."""
    secret = deid.load_secret(site.name, demo=demo, secret_file=site.deid.secret_file)
    keyed = hashlib.sha256(b"forewarn people ledger\0" + secret).hexdigest()[:16]
    return f"{keyed}/{site.deid.max_shift_days}"


def people_gate(site: SiteConfig, pull: Stage, *, labels: Stage | None = None, task: str | None = None,
                demo: bool = False, design: str = "") -> tuple[str, Callable[[], None] | None]:
    """The rule of 11 between nights (``records.people``), for a site's pull or (with
    ``labels`` and ``task``) for one task's cohort there: the reason the night is held,
    or "" and the call that enters the night in the ledger once it has published. A
    ledger that cannot be read (or is gone) holds the night too: without it the night
    cannot be compared with those already published."""
    started = time.perf_counter()

    @functools.cache
    def people():  # made once, and not at all for a pull published already
        if labels is None:
            return person_digests(pull.result.out_dir)
        # the subgroup tables' levels, for the task's own held-out split (the temporal
        # design publishes none)
        levels = None if design else label_demographics(pull.result.events_dir, labels.result.labels_path)
        return task_people(labels.result.labels_path, labels.result.splits_path, levels)

    try:
        key = pull.digest if labels is None else labels.digest
        ledger = PeopleLedger(site.workdir, task=task)
        fingerprint = deid_fingerprint(site, demo)
        check = ledger.check(key, people, deid=fingerprint)
        # A work folder lost whole takes the ledger and its marker with it; the tracking
        # store, which the site's results went to, still says that they did.
        if not check["compared"] and not ledger.index_path.is_file() and tracking.published_from(
                site.name, task=task.removesuffix(f"-{design}") if task and design else task, design=design or None):
            return unledgered_reason(ledger.index_path), None
    except Exception as exc:  # noqa: BLE001 - whatever broke, the night cannot be checked, so it is held
        return ("the people ledger could not be read, so tonight cannot be compared with the nights already "
                f"published: {_reason(exc)}"), None
    # The log stays at the site's process; the date of the night it is close to stays out of it too.
    log.info("site %s%s, people ledger: %s against %d published night(s) in %.1f s", site.name,
             f", task {task}" if task else "", "held" if check["held"] else "may publish", check["compared"],
             time.perf_counter() - started)
    if check["held"]:
        return held_reason(check, design=design), None
    return "", lambda: ledger.record(key, people, deid=fingerprint)


PULLS_FILE = "pulls.json"  # in a site's workdir: the table counts of its last pulls (it stays at the site)


def previous_pull(site: SiteConfig, pull: Stage, *, keep: int = 10) -> dict | None:
    """The report counts of the site's latest earlier pull whose data differed from
    ``pull``'s (another content digest), or None on a first night; and ``pull``'s own are
    recorded for the next night (the last ``keep`` pulls). A night that pulls the same
    data again compares with the same earlier pull, so its report does not change."""
    # Pulls are told apart by their content: a database source's stage key holds the
    # time of the pull, so the same data pulled again has another key.
    path = site.workdir / PULLS_FILE
    history = json.loads(path.read_text()) if path.is_file() else []
    earlier = next((h for h in reversed(history) if h["digest"] != pull.digest), None)
    if not history or history[-1]["digest"] != pull.digest:
        report = json.loads(pull.result.report_path.read_text())
        entry = {"digest": pull.digest, "date": datetime.now(UTC).strftime("%Y-%m-%d"),
                 "tables": {n: {k: t[k] for k in ("read", "kept", "quarantined")} for n, t in report["tables"].items()},
                 "quarantined": report.get("quarantined", 0)}
        history = [h for h in history if h["digest"] != pull.digest][-(keep - 1):] + [entry]
        tmp = path.with_suffix(".partial")
        tmp.write_text(json.dumps(history, indent=1))
        tmp.replace(path)
    return earlier


def run_task(study: Study, spec: TaskSpec, pulls: dict[str, Stage], caches: dict[str, StageCache],
             used: dict[str, list[Stage]], logger, earlier: dict[str, dict | None] | None = None,
             enter: dict[str, Callable[[], None] | None] | None = None,
             registered: list[tracking.RegisteredModel] | None = None) -> list[SiteResult]:
    """One task at every site that pulled: per-site models, then the cross-site and
    temporal validations and those of ``registered`` models from outside the study, then
    publication. A site whose cohort for the task barely changed since a published night
    (``people_gate``) takes no part in it tonight."""
    results, built, data = [], {}, {}
    sites = {s.name: s for s in study.sites if s.name in pulls}
    if not study.validation.own_models and not any(m.task == spec.name for m in registered or []):
        # a validation-only study with nothing to validate for this task tonight: nothing leaves, nothing is ledgered
        return [SiteResult(name, spec.name, "skipped", reason="validation-only study: no registered model of this task "
                           "could be validated tonight (the warnings above say why)") for name in sites]
    for name, site in sites.items():
        cache = caches[name]
        try:
            labels = label_task(pulls[name], spec, study, cache)
            used[name].append(labels)
            held, record = people_gate(site, pulls[name], labels=labels, task=spec.name, demo=study.demo)
            if held:
                logger.warning("site %s, task %s: held: %s", name, spec.name, held)
                results.append(SiteResult(name, spec.name, "held", reason=held))
                continue
            if enter and enter.get(name):  # the site's night, before anything of it leaves
                enter[name]()
                enter[name] = None
            record()  # this task's results may leave tonight (a publication that fails later is still counted)
            if not study.validation.own_models:  # a validation-only study: the labels the registered models need
                data[name] = {"pull": pulls[name], "labels": labels}
                continue
            matrix = featurize_task(pulls[name], labels, spec, study, cache)
            used[name].append(matrix)
            # The network's model trains on every site with rows, whether or not the site's own
            # model is retrained tonight or can be trained at all (a site with too few events
            # for trees of its own still tunes and evaluates the network's, and evaluates the
            # other sites' models as an external site).
            data[name] = {"pull": pulls[name], "labels": labels, "matrix": matrix,
                          "previous_pull": (earlier or {}).get(name)}
            reason = trainability(matrix.result)
            if reason:
                logger.warning("site %s, task %s: no model of its own: %s", name, spec.name, reason)
                results.append(SiteResult(name, spec.name, "skipped", reason=reason))
                continue
            key = train_key(matrix, study)
            tracking.abandon_runs(key, tag="train_key")  # what a killed run of this candidate left half-made
            info = tracking.champion_info(spec.name, name)
            if info is not None and info[1].get(f"{tracking.TAG}.train_key") == key:
                # The champion was trained on these very features: nothing changed since it was published.
                trained = train_task(matrix, spec, study, cache)
                evaluation = evaluate_task(matrix, trained, labels, spec, study, name, cache, pulls[name])
                held = evaluation.result.load_metrics()["held_out"][PRIMARY]
                champion = ChampionCheck(info[0], held["auroc"], trained.result, matrix.result)
                drift = {"compare": None, "decision": {
                    "action": "retrain", "drifted": False,
                    "reasons": [f"champion v{info[0]} was trained on these same features: nothing to compare"]}}
            else:
                found = champion_task(site, spec, study, pulls[name], labels, cache)
                champion = found[1] if found else None
                if found:
                    used[name] += found[0]
                drift = drift_record(champion, matrix, study)
                action = drift["decision"]["action"]
                if action != "retrain":
                    logger.warning("site %s, task %s: drift policy says %s: %s", name, spec.name, action,
                                   "; ".join(drift["decision"]["reasons"]))
                if action == "skip":
                    log = logged(cache, f"drift-{spec.name}", [matrix.digest, json.dumps(drift, sort_keys=True, default=str)],
                                 lambda key, _, d=drift, n=name: {"run_id": log_drift_only(study, spec, n, d, data_digest(pulls[n]), key)})
                    used[name].append(log)
                    results.append(SiteResult(name, spec.name, "skipped", run_id=log.result["run_id"], drift=drift,
                                              reason=f"drift policy: {'; '.join(drift['decision']['reasons'])}; the champion stays"))
                    continue
                trained = train_task(matrix, spec, study, cache)
                evaluation = evaluate_task(matrix, trained, labels, spec, study, name, cache, pulls[name])
            used[name] += [trained, evaluation]
            built[name] = data[name] | {"trained": trained, "evaluation": evaluation, "champion": champion, "drift": drift}
        except Exception as exc:  # noqa: BLE001 - the other sites go on; the run ends Failed
            logger.error("site %s, task %s failed: %s", name, spec.name, _reason(exc))
            results.append(SiteResult(name, spec.name, "failed", reason=_reason(exc)))
    validations: dict[str, list[dict]] = {name: [] for name in built}
    if "network" in study.validation.designs and len(data) >= 2:
        for name, row in network_rows(study, spec, data, caches, used, logger).items():
            if name in validations:  # a site whose own model the drift policy skipped has no report tonight
                validations[name].append(row)
    for model_site, b in built.items():
        try:
            validations[model_site] += cross_validations(study, spec, model_site, b, data, caches, used)
        except Exception as exc:  # noqa: BLE001
            logger.error("site %s, task %s: validation failed: %s", model_site, spec.name, _reason(exc))
            validations[model_site].append({"design": "failed", "note": _reason(exc)})
    for model in (m for m in registered or [] if m.task == spec.name):
        for name, (row, log) in registered_rows(study, spec, model, data, caches, used, logger).items():
            if name in validations:  # a site with no model of its own tonight has no report; the run has it
                validations[name].append(row)
            results.append(registered_result(study, sites[name], spec, model, row, log))
    for name, b in built.items():
        try:
            stage = publish_task(sites[name], study, spec, b, validations[name], b["champion"], b["drift"], caches[name])
        except Exception as exc:  # noqa: BLE001
            logger.error("site %s, task %s: publish failed: %s", name, spec.name, _reason(exc))
            results.append(SiteResult(name, spec.name, "failed", reason=f"publish failed: {_reason(exc)}"))
            continue
        used[name].append(stage)
        result = stage.result
        if stage.hit:
            # The registry may have moved since that night (a later challenger, a promotion):
            # the aliases are read as they are now, not as the cached result recorded them.
            aliases, recorded = result.aliases, False
            try:
                aliases = tracking.version_aliases(spec.name, name, result.version)
            except Exception as exc:  # noqa: BLE001 - the summary keeps the recorded ones
                logger.warning("site %s, task %s: the registry's aliases could not be read: %s", name, spec.name, _reason(exc))
                recorded = True
            result = SiteResult(**{**result.__dict__, "aliases": aliases, "cached": True, "aliases_recorded": recorded})
        logger.info(
            "site %s, task %s: held-out AUROC %s, AUPRC %s; %s%s", name, spec.name,
            tracking.auroc_text(result.metrics), tracking.auprc_text(result.metrics), result.decision,
            " (unchanged since the last run)" if stage.hit else "",
        )
        results.append(result)
    return results


def network_rows(study, spec, built, caches, used, logger) -> dict[str, dict]:
    """The network design's report row (and MLflow run) of each site, after the network's
    model is registered under the promotion rule across the sites (``network_publish``);
    when no network model was trained, a row that says why."""
    try:
        run = network_task(study, spec, built, caches)
    except Exception as exc:  # noqa: BLE001 - the sites' own models go on
        run = NetworkRun({}, _reason(exc))
        logger.error("task %s: the network model failed: %s", spec.name, run.reason)
    for n, stages in run.used.items():
        used[n] += stages
    if run.reason:
        logger.warning("task %s: no network model: %s", spec.name, run.reason)
        if run.drift.get("decision", {}).get("action") == "skip":  # the check that skipped it, as a site's skip is
            first = next(iter(built))
            skip = logged(caches[first], f"network-drift-{spec.name}", [run.key, json.dumps(run.drift, sort_keys=True, default=str)],
                          lambda key, _: {"run_id": log_drift_only(study, spec, tracking.NETWORK, run.drift,
                                                                   network_digest(built), key)})
            used[first].append(skip)
        return {n: {"design": "network", "train_site": " + ".join(built), "eval_site": n, "recalibrated": None,
                    "note": f"not trained: {run.reason}"} for n in built}
    first = next(iter(run.stages))
    model = run.stages[first][1]
    used[first].append(model)  # the coordinator's model lives in the first site's cache
    # Not the champion nor the drift record: a model with the same content is registered
    # once, whatever the registry says by the time of a rerun (as ``publish_task``).
    inputs = [model.digest] + [run.stages[n][2].digest for n in run.stages]
    inputs += [json.dumps({"study": study.name, "promotion": _cfg(study.promotion)}, sort_keys=True)]
    try:
        publication = logged(caches[first], f"network-publish-{spec.name}", inputs,
                             lambda key, out: network_publish(study, spec, run, built, key, out))
    except Exception as exc:  # noqa: BLE001 - the rows still say how the model did
        reason = _reason(exc)
        logger.error("task %s: registering the network model failed: %s", spec.name, reason)
        registered = {"decision": f"not registered: {reason}", "promoted": False, "reasons": [], "version": None,
                      "champion_version": None}
    else:
        used[first].append(publication)
        registered = publication.result
        logger.info("task %s: the network's model: %s", spec.name, registered["decision"])
    rows = {}
    at_sites = {n: network_site_row(stage, n) for n, (_, _, stage) in run.stages.items()}
    for n, (features, _, stage) in run.stages.items():
        drift = {"compare": (run.drift.get("sites", {}).get(n) or {}).get("compare"), "decision": run.drift["decision"]}
        others = [row for m, row in at_sites.items() if m != n]
        log = logged(caches[n], f"network-{spec.name}",
                     [stage.digest, built[n]["pull"].digest, json.dumps(registered, sort_keys=True, default=str),
                      json.dumps(study.reporting.for_task(spec.name), sort_keys=True)]
                     + [run.stages[m][2].digest for m in run.stages if m != n],
                     lambda key, out, st=stage, f=features, n=n, d=drift, o=others: log_network(
                         study, spec, n, st, f, built[n], key, out, registered, d, o))
        used[n] += [features, stage, log]
        rows[n] = log.result
    return rows


def network_publish(study: Study, spec: TaskSpec, run: NetworkRun, built: dict, stage_key: str, out: Path) -> dict:
    """Register the network's model (``forewarn-<task>-network``) from a run of its own
    (``forewarn.role`` ``registration``, site ``network``) and apply the promotion rule
    across the sites (``models.promotion.decide_network``): it becomes the network's
    champion only if it is non-inferior to the champion at every site, on each site's
    held-out rows, and no site's drift check alerts. The run holds the model, its inputs
    for the next night (trees, calibrator, columns, each site's drift profile), the
    decision, and the drift record. Returns the decision record (also the run's
    ``validation/promotion.json``)."""
    import mlflow

    done = tracking.completed_run(stage_key)
    if done is not None:  # registered by a run killed before it could mark the stage done
        log.info("network/%s: registration run %s was completed before the stage was marked done; reusing it",
                 spec.name, done.info.run_id)
        path = mlflow.artifacts.download_artifacts(run_id=done.info.run_id, artifact_path="validation/promotion.json",
                                                   dst_path=str(out))
        return json.loads(Path(path).read_text())
    names = list(run.stages)
    first = names[0]
    name = tracking.registered_name(spec.name, tracking.NETWORK)
    candidate = TrainedModels(run.stages[first][2].dir / "models")
    same_content = run.champion is not None and run.champion.content == model_content(
        candidate, run.stages[first][0].result.columns_path)
    if run.champion is not None and (run.champion.same or same_content):
        how = ("was trained again with the same result (the same trees, calibrator and columns)" if not run.champion.same
               else "was trained on these same features")
        return {"promoted": False, "unchanged": True, "version": run.champion.version,
                "champion_version": run.champion.version,
                "name": name, "run_id": None, "reasons": [],
                "decision": f"{name} v{run.champion.version} is the champion and {how}: nothing new to register"}
    validations = {n: run.stages[n][2] for n in names}
    held = {n: Evaluation(v.dir / "evaluation").load_metrics()["held_out"][PRIMARY] for n, v in validations.items()}
    compared = {"version": run.champion.version, "auroc": run.champion.auroc} if run.champion else None
    if compared is not None and run.champion.model is not None:  # each site's paired difference, computed there
        compared["paired"] = {n: champion_difference(study, candidate, run.stages[n][0].result, run.champion.model,
                                                     run.champion.matrices[n])
                              for n in names if n in run.champion.matrices}
    promotion = decide_network(held, compared, study.promotion) | {"paired": (compared or {}).get("paired")}
    if run.champion is not None:
        promotion["reasons"] = [*promotion["reasons"], *run.champion.notes]
    action = run.drift["decision"]["action"]
    if action == "alert":
        alerting = [n for n, d in run.drift.get("sites", {}).items() if d["decision"]["action"] == "alert"]
        alerted = [f"{n}: {r}" for n in alerting for r in run.drift["sites"][n]["decision"]["reasons"]
                   if "drifted" in r or "churn" in r or "changed" in r][:3]
        promotion |= {"promoted": False, "reasons": [
            "drift alert: the data drifted from the network champion's beyond the drift policy at a site, so a person "
            f"reviews before any promotion ({'; '.join(alerted) or 'see the drift section'})", *promotion["reasons"]]}
    if promotion["promoted"]:
        decision = "promoted to the network's champion"
    else:
        stays = f"champion stays v{promotion['champion_version']}" if promotion["champion_version"] else "no champion yet"
        decision = f"kept as challenger ({stays})"
    decision += f": {'; '.join(promotion['reasons'])}."
    trained = TrainedModels(validations[first].dir / "models")
    features: FeatureMatrix = run.stages[first][0].result
    shape = json.loads((features.dir / "shape.json").read_text())
    training = {k: v for k, v in json.loads(trained.summary_path.read_text()).items() if k not in ("l1_logistic", "age_sex")}
    digest = network_digest(built)
    run_id = tracking.start_site_run(
        experiment=tracking.experiment_name(spec.name), site=tracking.NETWORK,
        run_name=f"network-registration-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        tags={"task": spec.name, "task_digest": spec.digest(), "role": "registration", "train_site": " + ".join(names),
              "code_version": code_version(), "study": study.name, "stage_key": stage_key, "train_key": run.key,
              "data_digest": digest, "drift_action": action},
    )
    name, version, aliases = tracking.register_model(
        run_id=run_id, task=spec.name, site=tracking.NETWORK, xgb_model_path=trained.xgboost_path,
        n_features=shape["columns"], promote=promotion["promoted"], decision=decision, tags={"train_key": run.key},
        calibration_path=trained.calibration_path,
    )
    record = promotion | {"decision": f"{name} v{version} {decision}", "version": version, "name": name,
                          "aliases": list(aliases), "run_id": run_id}
    inputs = {"xgboost.json": trained.xgboost_path, "calibration.json": trained.calibration_path,
              "columns.parquet": features.columns_path}
    for n, v in validations.items():  # an artifact keeps its file's name: each site's profile under its own
        inputs[f"profile-{n}.json"] = Path(shutil.copyfile(v.dir / "profile.json", out / f"profile-{n}.json"))
    summary = {n: {k: held[n].get(k) for k in ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "brier", "calibration_slope",
                                               "withheld")}
               for n in names}
    # The model's AUROC between the sites (as each network report shows it), for the
    # registry runs' compare view: from the aggregates the sites published.
    between = between_sites([{"site": n, **held[n]} for n in names])
    spread = {f"between_sites/{k}": between[k] for k in BETWEEN_SITES_METRICS if between and between[k] is not None}
    tracking.log_records(
        run_id=run_id, params=run_params(study, spec, tracking.NETWORK, shape, training),
        metrics={"promotion/promoted": float(promotion["promoted"])} | spread
        | {k: v for n, d in (promotion.get("paired") or {}).items() for k, v in promotion_metrics(d, f"promotion/{n}/").items()},
        artifacts={f"{tracking.MODEL_INPUTS}/{k}": v for k, v in inputs.items()},
        dicts={"validation/promotion.json": record, "validation/drift.json": run.drift, "validation/sites.json": summary,
               **({"validation/between_sites.json": between} if between else {}),
               "config/study.json": json.loads(study.model_dump_json()),
               "config/task.json": json.loads(spec.model_dump_json())},
        note=f"{spec.name}: the network's model, trained across {', '.join(names)} without moving rows. "
             f"{record['decision']} Each site's evaluation is its run with validation_design network.",
        tags={"promoted": str(promotion["promoted"]).lower(), "drift_alert": str(action == "alert").lower()},
    )
    if promotion["promoted"]:  # last, so that a killed run never leaves the alias on a half-made version
        tracking.set_champion(name, version)
    tracking.finish_run(run_id)
    return record


def cross_validations(study, spec, model_site, b, data, caches, used) -> list[dict]:
    """The external rows of ``model_site``'s model (at every other site with labels and
    features tonight: ``data``, whether or not that site could train a model of its own)
    and its temporal row."""
    out = []
    if "external" in study.validation.designs:
        for site in study.sites:
            if site.name == model_site or site.name not in data:
                continue
            other = data[site.name]
            point = b["evaluation"].result.load_metrics().get("subgroup_threshold") or {}
            stage = external_task(model_site, b["trained"], b["matrix"], other["pull"], other["labels"], study, spec,
                                  caches[site.name], eval_site=site.name, threshold=point.get("threshold"))
            log = logged(caches[model_site], f"external-{spec.name}-{site.name}",
                         [stage.digest, b["trained"].digest, other["pull"].digest],
                         lambda key, out, st=stage, s=site.name, o=other: log_external(
                             study, spec, model_site, s, st, b["trained"], o["pull"], o["labels"], key, out,
                             train_key(b["matrix"], study)))
            used[site.name].append(stage)
            used[model_site].append(log)
            out.append(log.result)
    if "temporal" in study.validation.designs:
        site = next(s for s in study.sites if s.name == model_site)
        stage = temporal_task(site, b["pull"], spec, study, caches[model_site])
        used[model_site].append(stage)
        held, record = ("", None) if "skipped" in stage.result else people_gate(
            site, b["pull"], labels=SimpleNamespace(result=LabelSet(stage.dir, spec.name), digest=stage.digest),
            task=f"{spec.name}-temporal", demo=study.demo, design="temporal")
        if held:  # the temporal design's own split: its test set is counted apart from the task's
            out.append({"design": "temporal", "train_site": model_site, "eval_site": model_site, "recalibrated": None,
                        "skipped": True, "note": f"not published tonight: {held}"})
        elif "skipped" not in stage.result:
            record()
            log = logged(caches[model_site], f"temporal-{spec.name}", [stage.digest, b["pull"].digest],
                         lambda key, out, st=stage: log_temporal(study, spec, model_site, st, b["pull"], key, out))
            used[model_site].append(log)
            out.append(log.result)
        else:  # its row says why, so that the report does not read as if none was asked for
            out.append({"design": "temporal", "train_site": model_site, "eval_site": model_site, "recalibrated": None,
                        "skipped": True, "note": f"not run: {stage.result['skipped']}"})
    return out


# What scoring a registered model at a site needs of its inputs (``model_inputs``): not its
# baselines or its sites' drift profiles.
_INPUTS = TrainedModels(Path("."))
REGISTERED_INPUTS = (*(p.name for p in (_INPUTS.xgboost_path, _INPUTS.calibration_path, _INPUTS.offset_path,
                                         _INPUTS.blend_path)), "columns.parquet")


def resolve_registered(study: Study, specs: list[TaskSpec], logger) -> list[tracking.RegisteredModel]:
    """The study's ``validation.registered`` models, resolved in the registry tonight (an
    alias names whichever version holds it now). One that cannot be resolved, is this
    study's own (its designs validate it already) or is for a task the study does not run
    is left out with a warning: a comparison does not stop the night."""
    out, tasks = [], {spec.name for spec in specs}
    for ref in study.validation.registered:
        try:
            model = tracking.registered_model(ref)
        except Exception as exc:  # noqa: BLE001 - the study's own models still train tonight
            logger.warning("registered model %s: not validated tonight: %s", ref,
                           str(exc) if isinstance(exc, ValueError) else _reason(exc))
            continue
        if any((m.name, m.version) == (model.name, model.version) for m in out):
            logger.warning("registered model %s: %s is named twice in validation.registered; validated once", ref,
                           model.label)
        elif model.study == study.name:
            logger.warning("registered model %s: not validated: %s is this study's own model, which its validation "
                           "designs evaluate at its sites already", ref, model.label)
        elif model.task not in tasks:
            logger.warning("registered model %s: not validated: %s is a model of task %s, which this study does not "
                           "run (its tasks: %s)", ref, model.label, model.task, ", ".join(sorted(tasks)))
        else:
            out.append(model)
    return out


def registered_rows(study: Study, spec: TaskSpec, model: tracking.RegisteredModel, data: dict, caches: dict[str, StageCache],
                    used: dict[str, list[Stage]], logger) -> dict[str, tuple[dict, Stage | None]]:
    """A registered model from outside the study at each site with labels and features
    tonight (``data``), shipped there as the external design ships a site's model: its
    inputs fetched from the registry, the site's rows featurized in its columns, scored as
    shipped (at the alert threshold it was published with) and after recalibration on the
    site's tuning split; one MLflow run per site (``validation_design`` external, tags
    ``validated_model`` and ``validated_version``); only aggregates. Returns each site's
    report row (design ``registered``) with its MLflow logging stage (None where it was
    not scored); a model of another definition of the task (its task digest) is not
    scored, nor at a site of the name it was trained at, and the row says why."""
    train_site = f"{model.site} ({model.label})"

    def skipped(site: str, reason: str) -> dict:
        return {"design": "registered", "train_site": train_site, "eval_site": site, "recalibrated": None,
                "skipped": True, "note": reason}

    if model.task_digest != spec.digest():
        reason = (f"not validated: {model.label} predicts another definition of {spec.name} (task digest "
                  f"{model.task_digest[:12]}; this study's {spec.digest()[:12]}): its cohort, outcome or times differ")
        logger.warning("task %s: %s", spec.name, reason)
        return {n: (skipped(n, reason), None) for n in data}
    label = f"registered-{model.name}-v{model.version}"
    rows = {}
    for n, d in data.items():
        if n in model.site.split(" + "):
            # A site of the same name may be the very site: its rows may have trained the model.
            rows[n] = (skipped(n, f"not validated here: {model.label} was trained at a site named {n!r} (its study "
                               f"{model.study or 'unknown'}), so these rows may be its own training data, not external"),
                       None)
            logger.warning("site %s, task %s: registered model %s: %s", n, spec.name, model.label, rows[n][0]["note"])
            continue
        cache = caches[n]
        try:
            def fetch(out: Path, m=model) -> dict:
                tracking.download_inputs(m.run_id, out / "model", only=REGISTERED_INPUTS)
                return {"threshold": tracking.registered_threshold(m.run_id, out / "run"),
                        "features": tracking.registered_features(m.run_id, out / "run")}

            inputs = cache.run(label, key_of("registered model", {"run": model.run_id, "name": model.name,
                                                                  "version": model.version}, []), fetch)
            # the model's columns computed as its own study computed them (windows, aggregations, roll-ups);
            # how this machine computes them (workers, batches) is this study's
            features, dropped = model_features(study, inputs.result["features"])
            if dropped:
                logger.warning("site %s, task %s: registered model %s was trained with feature settings this version "
                               "of Forewarn no longer has (%s); its columns are computed without them", n, spec.name,
                               model.label, ", ".join(dropped))
            shipped = SimpleNamespace(digest=inputs.digest, result=TrainedModels(inputs.dir / "model"))
            columns = SimpleNamespace(digest=inputs.digest,
                                      result=SimpleNamespace(columns_path=inputs.dir / "model" / "columns.parquet"))
            stage = external_task(label, shipped, columns, d["pull"], d["labels"], study, spec, cache, eval_site=n,
                                  threshold=inputs.result["threshold"], features=features)
            log = logged(cache, f"{label}-{spec.name}", [stage.digest, inputs.digest, d["pull"].digest],
                         lambda key, out, st=stage, n=n, d=d, f=features: log_registered(
                             study, spec, model, n, st, d["pull"], d["labels"], key, f, out))
            used[n] += [inputs, stage, log]
            rows[n] = (log.result, log)
            shipped_metrics = stage.result["as_shipped"]
            logger.info("site %s, task %s: registered model %s validated here: held-out AUROC %s, AUPRC %s (MLflow run %s)",
                        n, spec.name, model.label,
                        "withheld" if shipped_metrics.get("withheld") else f"{shipped_metrics['auroc']:.3f}",
                        "withheld" if shipped_metrics.get("withheld") else f"{shipped_metrics['auprc']:.3f}",
                        log.result.get("run_id"))
        except Exception as exc:  # noqa: BLE001 - a comparison that fails does not stop the site's own model
            logger.error("site %s, task %s: registered model %s: validation failed: %s", n, spec.name, model.label,
                         _reason(exc))
            rows[n] = (skipped(n, f"failed: {_reason(exc)}") | {"failed": True}, None)
    return rows


def registered_report(site: SiteConfig, spec: TaskSpec, model: tracking.RegisteredModel) -> Path:
    """Where a site keeps the latest validation report of a registered model (``log_registered``)."""
    return site.workdir / "reports" / spec.name / f"{model.name}-v{model.version}.html"


def registered_result(study: Study, site: SiteConfig, spec: TaskSpec, model: tracking.RegisteredModel, row: dict,
                      log: Stage | None) -> SiteResult:
    """A registered model's validation at ``site`` as the night's results list it: the
    summary's line. ``validated`` (``log``: its MLflow logging stage, whose report is
    copied to the site's stable path every night, cached or not), or ``not validated``
    with the reason; in a validation-only study a validation that failed is ``failed``
    (it was the study's whole work)."""
    if row.get("skipped"):
        status = "failed" if row.get("failed") and not study.validation.own_models else "not validated"
        return SiteResult(site.name, spec.name, status, reason=f"registered model {model.label}: {row['note']}",
                          model_name=model.name, version=model.version)
    metrics = {f"{tracking.HELD_OUT}/{k}": float(row[k]) for k in ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc",
                                                                   "calibration_slope")
               if row.get(k) is not None and not row.get("withheld")}
    report, written = registered_report(site, spec, model), None if log is None else log.dir / "report.html"
    if written is not None and written.is_file():  # (a run reused from a killed process has none in its stage)
        report.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(written, report)
    return SiteResult(site.name, spec.name, "validated", run_id=row.get("run_id") or "",
                      experiment=tracking.experiment_name(spec.name), model_name=model.name, version=model.version,
                      decision=f"registered model {model.label} (trained at {model.site}) validated here",
                      report_path=written if written is not None and written.is_file() else None, metrics=metrics,
                      cached=bool(log is not None and log.hit))


def log_registered(study: Study, spec: TaskSpec, model: tracking.RegisteredModel, eval_site: str, stage: Stage,
                   pull: Stage, labels: Stage, stage_key: str, features: FeatureConfig, out: Path) -> dict:
    """The MLflow run of a registered model from outside the study at ``eval_site``
    (``registered_rows``): ``log_external``'s names and tags, its params the model's own
    registration run's (the model's make-up) with this site, the features it was scored
    on (``features``: the model's own settings) and this study's bootstrap and split. The
    run holds the validation's report (``evaluation.report.validation_context``), written
    into ``out`` (``registered_result`` copies it to the site's ``registered_report``)."""
    shape = json.loads((stage.dir / "features" / "shape.json").read_text())
    params = {**model.params, "site": eval_site, "n_features": shape["columns"], "windows": ",".join(features.windows),
              "aggs": ",".join(features.aggs), "min_code_subjects": features.min_code_subjects,
              "bootstrap": study.evaluation.bootstrap, "split_seed": study.split_seed}

    def artifacts(run_id: str) -> dict[str, Path]:
        _, _, attrition = labels.result.load()
        context = validation_context(
            site=eval_site, task=spec, record=stage.result, attrition=attrition,
            model={"name": model.name, "version": model.version, "site": model.site, "study": model.study or "unknown",
                   "run_id": model.run_id, "ref": model.ref},
            features={"columns": f"{shape['columns']:,}", "windows": ", ".join(features.windows),
                      "aggs": ", ".join(features.aggs)},
            data_digest=data_digest(pull), code_version=code_version(),
            generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), mlflow_run_id=run_id)
        return {"report.html": write_report(context, out / "report.html", template="validation.html.j2")}

    return log_shipped(
        study, spec, design="external", train_site=model.site, eval_site=eval_site, stage=stage,
        features=stage.dir / "features", training=None, params=params, pull=pull, stage_key=stage_key,
        run_name=f"{model.name}-v{model.version}-at-{eval_site}", dataset=f"{eval_site}/{spec.name}/{model.name}-v{model.version}-columns",
        note=f"registered model {model.label} (trained at {model.site}, study {model.study or 'unknown'}) evaluated at "
             f"{eval_site} (held-out rows there; only aggregates returned).",
        row_note=f"a registered model from outside this study ({model.ref}), shipped here; metrics on this site's held-out rows",
        tags={"validated_model": model.name, "validated_version": model.version, "validated_study": model.study},
        row_fields={"design": "registered", "train_site": f"{model.site} ({model.label})"}, artifacts=artifacts)


def prune(cache: StageCache, used: list[Stage], *, keep_runs: int) -> None:
    """Keep the stage folders of the last ``keep_runs`` runs; remove the rest."""
    history_path = cache.root / "history.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    history = (history + [sorted({str(s.dir) for s in used})])[-keep_runs:]
    cache.root.mkdir(parents=True, exist_ok=True)
    tmp = history_path.with_suffix(".partial")
    tmp.write_text(json.dumps(history, indent=1))
    tmp.replace(history_path)
    cache.prune({Path(p) for run in history for p in run})


def run_nightly(study: Study):
    """Run the flow once (with the study's task runner) and return (final state, results):
    the results of every site, also when the run ended Failed because one site failed."""
    from forewarn.flows import executor

    runner = executor.task_runner(study.executor)
    flow_ = nightly.with_options(task_runner=runner) if runner is not None else nightly
    state = flow_(study, return_state=True)
    results = state.result(raise_on_failure=False)
    if isinstance(results, SitesFailed):
        return state, results.results
    if isinstance(results, BaseException):
        raise results
    return state, results


@flow(name="forewarn-nightly-from-file", log_prints=False)
def nightly_from_file(study_file: str):
    """The deployment entry point (``prefect.yaml``): load and check the study file on the
    worker, then run :func:`nightly` for it. An invalid study fails here, before any work,
    with the key and the fix."""
    from forewarn.flows.study import load_study

    study = load_study(Path(study_file))
    state, results = run_nightly(study)
    return state
