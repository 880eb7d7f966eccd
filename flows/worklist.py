"""Each night's worklist at each site: every eligible person scored by the champion.

A model detects disease earlier only once it scores the people a clinic is about to see.
With ``worklist.enabled`` the nightly flow ends, at every site whose pull succeeded (a
site held by the people ledger included: its worklist never leaves it), by scoring each
person eligible for each task at their latest prediction time with the champion the
study prefers (``worklist.models``: the site's own, else the network's), exactly as
``forewarn score --eligible --by-risk`` does (``flows.score``): the champion's columns
made with its own feature settings, eligibility by the task definition its run recorded
(people already diagnosed, dead, or outside the population are left out), the calibrated
risk and the alert at the threshold the model was published with.

The worklist is ``<workdir>/worklists/<task>.parquet`` (the MEDS prediction schema,
highest risk first) with ``<task>.json`` beside it (the model, the eligibility counts,
the alerts). Both hold row-level or small counts of the site's own people: they stay at
the site, like the pull. Nothing of them goes to MLflow, the flow's Prefect logs or the
run's summary, which name the model and the file only: tonight's count of alerts against
last night's would tell who was diagnosed in between; so a worklist that fails says why
in ``<task>.error.json`` at the site, and the logs and summary name only the error's
kind. A worklist is a stage: an unchanged pull scored by the same champion is not scored
again. The folder holds tonight's worklists only: one of an earlier night is removed
when tonight has none of it (no champion, a failed pull or worklist, a task dropped or
worklists turned off), so that it cannot pass for tonight's.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from forewarn.features.labels import TaskSpec
from forewarn.flows import tracking
from forewarn.flows.cache import Stage, StageCache, key_of
from forewarn.flows.score import NoOneEligible, score
from forewarn.flows.study import SiteConfig, Study

log = logging.getLogger("forewarn")

FOLDER = "worklists"


def champion_version(name: str) -> str | None:
    """The version registered model ``name``'s ``champion`` alias points to, or None
    when the model or the alias does not exist. Any other error of the registry (a store
    that cannot be read) is raised: it must not read as "no champion"."""
    import mlflow

    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, "champion").version)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (
                exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc)):
            return None
        raise


def worklist_model(study: Study, spec: TaskSpec, site: str) -> tuple[tracking.RegisteredModel | None, list[str]]:
    """The champion that scores ``site``'s worklist of ``spec``: the first of
    ``worklist.models`` with one, resolved to its version (``tracking.registered_model``:
    a champion whose run did not finish is an error, not a reason to pass it over); and,
    for each model passed over, why."""
    passed = []
    for whose in study.worklist.models:
        name = tracking.registered_name(spec.name, site if whose == "site" else tracking.NETWORK)
        version = champion_version(name)
        if version is None:
            passed.append(f"{name} has no champion")
            continue
        return tracking.registered_model(f"{name}/{version}"), passed
    return None, passed


def worklist_stage(spec: TaskSpec, pull: Stage, cache: StageCache, model: tracking.RegisteredModel,
                   study: Study) -> Stage:
    """Score the eligible people of ``pull`` with ``model`` into the stage's
    ``worklist.parquet`` (highest risk first) and ``summary.json``; keyed on the pull's
    content and the model's run (and tonight's task, which a model registered before
    runs recorded theirs is scored with), so an unchanged night is not scored again."""
    key = key_of("worklist", {"model": model.name, "version": model.version, "run": model.run_id,
                              "task": spec.digest(), "tracking": tracking.current_uri()}, [pull.digest])

    def compute(out: Path) -> dict:
        with tempfile.TemporaryDirectory(prefix="forewarn-task-") as tmp:
            recorded = tracking.registered_task(model.run_id, Path(tmp))
        # the task its run recorded; one registered before runs kept it: tonight's (its digest is checked)
        summary = score(model.ref, pull.result.events_dir, None, out / "worklist.parquet",
                        task=None if recorded is not None else spec, eligible=recorded is not None,
                        codes_path=pull.result.codes_path, speed=study.features, by_risk=True)
        summary.pop("out")
        summary["scored_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        return {"predictions": out / "worklist.parquet", "summary": out / "summary.json"}

    return cache.run(f"worklist-{spec.name}", key, compute)


def _write(dest: Path, write) -> None:
    partial = dest.with_name(dest.name + ".partial")
    try:
        write(partial)
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)


def publish_locally(site: SiteConfig, spec: TaskSpec, stage: Stage) -> list[Path]:
    """Copy the stage's worklist to the site's stable paths (``worklists/<task>.parquet``,
    then ``.json`` with the night it was published; each replaced whole, the summary last,
    so a summary never describes another list); returns the paths."""
    folder = site.workdir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    parquet, summary = folder / f"{spec.name}.parquet", folder / f"{spec.name}.json"
    summary.unlink(missing_ok=True)
    _write(parquet, lambda p: shutil.copyfile(stage.result["predictions"], p))
    record = json.loads(Path(stage.result["summary"]).read_text())
    record["published_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    _write(summary, lambda p: p.write_text(json.dumps(record, indent=1)))
    return [parquet, summary]


def record_error(site: SiteConfig, spec: TaskSpec, exc: BaseException) -> Path:
    """The whole reason a worklist failed, in ``worklists/<task>.error.json`` at the
    site: its text may hold counts of the site's people, so only its kind leaves."""
    folder = site.workdir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.name}.error.json"
    _write(path, lambda p: p.write_text(json.dumps({
        "task": spec.name, "error": type(exc).__name__, "reason": str(exc),
        "at": datetime.now(UTC).isoformat(timespec="seconds")}, indent=1)))
    return path


def sweep(site: SiteConfig, keep: set[Path]) -> set[str]:
    """Remove every file of the site's worklist folder but ``keep``; returns the tasks
    whose worklist (not an error record) was removed."""
    folder = site.workdir / FOLDER
    removed = set()
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file() and path not in keep:
                path.unlink()
                if path.suffix == ".parquet":
                    removed.add(path.stem)
    return removed


def worklists(study: Study, specs: list[TaskSpec], pulls: dict[str, Stage], caches: dict[str, StageCache],
              used: dict[str, list[Stage]], logger) -> dict[tuple[str, str], tuple[str, bool]]:
    """With ``worklist.enabled``, every site's worklist of every task (``worklist_stage``),
    after the night's promotions, for each site in ``pulls``. Returns per (site, task) a
    line for the run's summary (the file and the model, or why there is none; never a
    count) and whether it failed. A site or task without a champion, or where no one is
    eligible, has no worklist (not a failure); one that fails to be made is, and the others
    go on. Then each site's folder is swept of what tonight did not write (``sweep``)."""
    notes: dict[tuple[str, str], tuple[str, bool]] = {}
    keep: dict[str, set[Path]] = {s.name: set() for s in study.sites}
    for site in study.sites:
        name = site.name
        for spec in specs if study.worklist.enabled else []:
            if name not in pulls:
                notes[name, spec.name] = ("no worklist: the site's pull failed tonight", False)
                continue
            try:
                model, passed = worklist_model(study, spec, name)
                if model is None:
                    notes[name, spec.name] = (f"no worklist: {'; '.join(passed)}", False)
                    continue
                stage = worklist_stage(spec, pulls[name], caches[name], model, study)
                used[name].append(stage)
                keep[name].update(publish_locally(site, spec, stage))
            except NoOneEligible as exc:  # not a failure: tonight there is no one to score
                keep[name].add(record_error(site, spec, exc))
                notes[name, spec.name] = (f"no worklist: no one at the site is eligible for {spec.name} tonight (the "
                                          f"counts are in {site.workdir / FOLDER / f'{spec.name}.error.json'})", False)
                continue
            except Exception as exc:  # noqa: BLE001 - the other worklists go on; the run ends Failed
                try:
                    recorded = record_error(site, spec, exc)
                    keep[name].add(recorded)
                    where = f"the reason is in {recorded} at the site"
                except OSError:
                    where = "its reason could not be written at the site"
                # the exception's text may count the site's people: only its kind leaves
                notes[name, spec.name] = (f"worklist failed ({type(exc).__name__}); {where}", True)
                continue
            whose = ", the network's" if model.name == tracking.registered_name(spec.name, tracking.NETWORK) else ""
            also = f"; {'; '.join(passed)}" if passed else ""
            notes[name, spec.name] = (f"worklist: {site.workdir / FOLDER / f'{spec.name}.parquet'} (scored by "
                                      f"{model.label}{whose}{also})", False)
            if stage.hit:
                logger.info("site %s, task %s: worklist unchanged since an earlier night", name, spec.name)
    for site in study.sites:
        for task in sorted(sweep(site, keep[site.name])):
            note, failed = notes.get((site.name, task), ("no worklist: worklists are off or the task is not the "
                                                          "study's tonight", False))
            notes[site.name, task] = (f"{note}; the earlier night's worklist was removed", failed)
    for (name, task), (note, failed) in sorted(notes.items()):
        (logger.error if failed else logger.info)("site %s, task %s: %s", name, task, note)
    return notes
