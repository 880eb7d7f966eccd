"""The ``forewarn`` command."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

# Before Prefect or MLflow is imported: no telemetry from a health-data tool, and a
# startup timeout that a cold ephemeral Prefect server on 2 cores can meet.
ENV_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # the champion's inputs are fetched each night  # MLflow's INFO lines would interleave with the flow's own
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "GIT_PYTHON_REFRESH": "quiet",
    "OMP_WAIT_POLICY": "PASSIVE",  # see forewarn.models: spinning OpenMP threads stall XGBoost on busy machines
}

app = typer.Typer(
    help="Forewarn: early disease detection on de-identified longitudinal records, across sites.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def setup_environment() -> None:
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    logger = logging.getLogger("forewarn")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s forewarn | %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _run_study(path: Path) -> None:
    from forewarn.flows.study import load_study

    try:
        study = load_study(path)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    missing = [f"{s.name}: {s.source.location}" for s in study.sites if not s.source.exists()]
    if missing:
        _fail(f"sources do not exist: {missing}. Fix the locations in {path}.")
    from forewarn.features.labels import load_task

    try:  # a task or intended use that is wrong fails here, before any site is pulled
        study.reporting.check_tasks([load_task(t).name for t in study.tasks])
    except (ValueError, FileNotFoundError) as exc:
        _fail(f"{path}: {exc}")
    from forewarn.flows.nightly import run_nightly

    state, results = run_nightly(study)
    # The flow has ended: what the ephemeral Prefect server logs while it shuts down (its
    # event recorder's flush cancelled mid-write, with tracebacks) is not the flow's.
    logging.getLogger("prefect.server").setLevel(logging.CRITICAL)
    workdirs = {site.name: site.workdir for site in study.sites}
    from forewarn.flows import tracking

    typer.echo("")
    for r in results:
        for line in result_lines(r, workdirs):
            typer.echo(line)
    if "network" in study.validation.designs:  # the network's model: one a task, trained across the sites
        for line in network_lines(dict.fromkeys(r.task for r in results)):
            typer.echo(line)
    typer.echo(f"\nMLflow store: {tracking.redacted_uri()}")
    typer.echo("Look at the runs:  forewarn ui   (then open http://127.0.0.1:5000)")
    if state.is_failed():
        typer.secho(f"\nThe run ended Failed: {state.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


def pull_site(events_dir: Path) -> str | None:
    """The site a pull's events folder came from (its ``pull_report.json``), if it says."""
    try:
        return json.loads((Path(events_dir).parent / "pull_report.json").read_text()).get("site")
    except (OSError, ValueError, AttributeError):
        return None


def here_recalibration(ref: str, events_dir: Path) -> dict:
    """``forewarn score --recalibrate-here``: what the external validation of model ``ref``
    at the events' site (their pull report's) published of the calibrator it fitted there
    (``tracking.external_recalibration``), or a clear error where there is none."""
    from forewarn.flows import tracking

    site = pull_site(events_dir)
    if site is None:
        raise ValueError(f"--recalibrate-here needs the site of {events_dir}: its pull report "
                         f"({Path(events_dir).parent / 'pull_report.json'}) is missing or names none.")
    model = tracking.registered_model(ref)
    if model.site == site:
        raise ValueError(f"{model.label} was trained at {site}, whose events these are: it is calibrated here already; "
                         "leave out --recalibrate-here.")
    key = tracking.version_train_key(model.name, model.version)
    found = tracking.external_recalibration(model.task, model.site, site, key) if key else None
    if found is None:
        raise ValueError(f"{model.label} has no external validation at {site} that fitted a calibrator there: run the "
                         f"study's external design with {site}'s data (its tuning split needs 11 or more events and "
                         "non-events), or score without --recalibrate-here.")
    return found


def result_lines(r, workdirs: dict[str, Path]) -> list[str]:
    """The run summary's lines of one (site, task) result."""
    from forewarn.flows import tracking

    head, indent = f"{r.site:>10}  {r.task:<22}", " " * 34
    if r.status == "validated":
        lines = [f"{head}registered model {r.model_name} v{r.version} validated here: held-out AUROC "
                 f"{tracking.auroc_text(r.metrics)}  AUPRC {tracking.auprc_text(r.metrics)}"]
        if r.report_path:
            latest = workdirs[r.site] / "reports" / r.task / f"{r.model_name}-v{r.version}.html"
            lines.append(f"{indent}report: {latest if latest.is_file() else r.report_path}")
    elif r.status == "not validated":
        lines = [f"{head}{r.reason}"]
    elif r.status != "published":
        lines = [f"{head}{r.status}: {r.reason}"]
    else:
        m = r.metrics
        latest = workdirs[r.site] / "reports" / r.task / "report.html"  # the latest report's stable copy
        lines = [f"{head}held-out AUROC {tracking.auroc_text(m)}  AUPRC {tracking.auprc_text(m)}  model {r.model_name} "
                 f"v{r.version} ({tracking.alias_text(r.aliases)})",
                 f"{indent}{decision_line(r)}",
                 f"{indent}report: {latest if latest.is_file() else r.report_path}"]
    if getattr(r, "worklist", ""):
        lines.append(f"{indent}{r.worklist}")
    return lines


def decision_line(r) -> str:
    """The summary's line of a published result's promotion decision: its head (the
    reasons are in the report's section 15), or, when every stage was cached, that the
    decision and report are an earlier night's."""
    if r.cached:
        whose = ("as that night recorded them (the registry could not be read: see the warning above)"
                 if getattr(r, "aliases_recorded", False) else "the registry's now")
        return f"unchanged since an earlier night (same data and settings): its report and decision stand; the aliases above are {whose}"
    head = r.decision.split(":", 1)[0]
    prefix = f"{r.model_name} v{r.version} "
    line = f"decision: {head.removeprefix(prefix)}; why: the report's section 15"
    if ((r.drift or {}).get("decision") or {}).get("action") == "alert":
        line = f"DRIFT ALERT, a person reviews before any promotion (the report's section 14); {line}"
    return line


def network_lines(tasks) -> list[str]:
    """The summary's line for each task's network model: its newest registered version, or
    that there is none (the network row of each site's report says why)."""
    from forewarn.flows import tracking

    out = []
    for task in tasks:
        found = tracking.latest_version(task, tracking.NETWORK)
        head = f"{tracking.NETWORK:>10}  {task:<22}"
        if found:
            out.append(f"{head}model {found[0]} v{found[1]} ({tracking.alias_text(found[2])}), trained across the sites; its report "
                       f"at each site: reports/{task}/network-report.html")
        else:
            out.append(f"{head}no network model: the network row of each site's report says why (section 12)")
    return out


@app.command()
def demo(
    people: Annotated[int | None, typer.Option(min=200, help="people in the whole network (split 40/60 between the sites) [default: 20,000]")] = None,
    workdir: Annotated[Path, typer.Option(help="where the demo network and its outputs go")] = Path("forewarn-demo"),
    seed: Annotated[int | None, typer.Option(help="seed of the synthetic network [default: 7]")] = None,
) -> None:
    """Generate the demo network into WORKDIR (if absent) and run the nightly flow once."""
    setup_environment()
    from forewarn.flows.study import demo_study_yaml
    from forewarn.records.demo import SITES, generate_network
    from forewarn.records.progress import stage

    workdir = workdir.resolve()
    study_path = workdir / "study.yaml"
    made_with = workdir / "network.json"  # the options the network was generated with
    sites = {name: workdir / "sites" / name / "omop.duckdb" for name in SITES}
    if all(p.is_file() for p in sites.values()):
        stored = json.loads(made_with.read_text()) if made_with.is_file() else {}
        asked = {k: v for k, v in (("people", people), ("seed", seed)) if v is not None}
        differ = {k: v for k, v in asked.items() if k in stored and stored[k] != v}
        if differ or (asked and not stored):
            was = " ".join(f"--{k} {v}" for k, v in stored.items()) or "options this version did not record"
            _fail(f"the demo network in {workdir} was generated with {was}; it is reused as it is, so "
                  f"{' '.join(f'--{k} {v}' for k, v in asked.items())} would be ignored. Pass another --workdir, "
                  f"or remove {workdir} to generate it again.")
        typer.echo(f"Using the demo network already in {workdir}")
    else:
        people, seed = 20_000 if people is None else people, 7 if seed is None else seed
        with stage(f"generate demo network ({people:,} people)") as counts:
            sites = generate_network(workdir / "sites", people=people, seed=seed)
            counts["sites"] = len(sites)
        made_with.write_text(json.dumps({"people": people, "seed": seed}))
    if not study_path.is_file():
        study_path.write_text(demo_study_yaml(sites, workdir))
    _run_study(study_path)


@app.command()
def run(study: Annotated[Path, typer.Argument(help="the study YAML")]) -> None:
    """Run the nightly flow once for STUDY now."""
    setup_environment()
    _run_study(study)


@app.command()
def serve(study: Annotated[Path, typer.Argument(help="the study YAML")]) -> None:
    """Serve the nightly flow on the study's cron schedule (needs a Prefect server: PREFECT_API_URL)."""
    setup_environment()
    from forewarn.flows.study import load_study

    try:
        loaded = load_study(study)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    deployment = build_deployment(loaded)
    from prefect import serve as prefect_serve

    typer.echo(f"Serving {deployment.name} on '{loaded.schedule.cron}' ({loaded.schedule.timezone}); Ctrl-C stops.")
    prefect_serve(deployment)


def build_deployment(study):
    from prefect.schedules import Cron

    from forewarn.flows.nightly import nightly

    return nightly.to_deployment(
        name=f"{study.name}-nightly",
        schedule=Cron(study.schedule.cron, timezone=study.schedule.timezone),
        parameters={"study": study.model_dump(mode="json")},
        tags=["forewarn", "nightly"],
    )


@app.command()
def pull(
    format: Annotated[str, typer.Argument(help="source format: omop, meds or fhir")],
    location: Annotated[str, typer.Argument(help="OMOP: DuckDB file, folder of tables or SQLAlchemy URL; MEDS: dataset root; FHIR: folder of Bundles or NDJSON")],
    site: Annotated[str, typer.Option(help="the site's name (in the pull report; in demo mode it also picks the public demo secret)")],
    out: Annotated[Path, typer.Option(help="output folder (replaced when the pull succeeds)")],
    db_schema: Annotated[str | None, typer.Option(help="schema of an OMOP SQL database")] = None,
    max_bad_fraction: Annotated[float, typer.Option(min=0, max=1, help="fail when more of a table is quarantined")] = 0.05,
    max_shift_days: Annotated[int, typer.Option(min=0, max=3650, help="per-subject date shift range (days, +/-)")] = 365,
    secret_file: Annotated[Path | None, typer.Option(help="file with the site's de-identification secret")] = None,
    demo_secret: Annotated[bool, typer.Option(help="use the public demo secret (synthetic data only)")] = False,
) -> None:
    """Pull one source into de-identified MEDS events (outside a flow) and print the pull report."""
    setup_environment()
    from forewarn.records import deid
    from forewarn.records.pull import PullFailed
    from forewarn.records.sources import FORMATS, pull_source

    if format not in FORMATS:
        _fail(f"format must be one of {list(FORMATS)}; got {format!r}.")
    try:
        config = deid.DeidConfig(deid.load_secret(site, demo=demo_secret, secret_file=secret_file), max_shift_days=max_shift_days)
        result = pull_source(format, location, out, site=site, config=config, max_bad_fraction=max_bad_fraction, db_schema=db_schema)
    except (ValueError, FileNotFoundError, PullFailed, deid.PHILeakError) as exc:
        _fail(str(exc))
    print_pull_report(json.loads(result.report_path.read_text()))
    typer.echo(f"\nevents: {result.events_dir}\nreport: {result.report_path}\nquality: {result.quality_path}")


def print_pull_report(report: dict) -> None:
    typer.echo(f"site {report['site']}: {report['subjects']:,} subjects, {report['events']:,} events; "
               f"read {report['read']:,} = kept {report['read'] - report['quarantined']:,} + quarantined {report['quarantined']:,}")
    typer.echo(f"{'table':<24}{'read':>12}{'kept':>12}{'quarantined':>13}")
    for name, t in report["tables"].items():
        typer.echo(f"{name:<24}{t['read']:>12,}{t['kept']:>12,}{t['quarantined']:>13,}")
        for reason, n in t["reasons"].items():
            typer.echo(f"{'':<6}{n:>8,}  {reason}")


@app.command()
def label(
    task: Annotated[str, typer.Argument(help="a Forewarn task YAML, a built-in task name, or an ACES config")],
    events_dir: Annotated[Path, typer.Argument(help="a folder of MEDS event shards (*.parquet)")],
    out: Annotated[Path, typer.Option(help="the labels file to write (MEDS label schema)")],
    predicates: Annotated[Path | None, typer.Option(help="an ACES predicates file (MEDS-DEV's datasets/*/predicates.yaml)")] = None,
) -> None:
    """Label prediction times on any MEDS dataset (outside a flow)."""
    setup_environment()
    from forewarn.features.aces_tasks import aces_labels, is_aces_config
    from forewarn.features.labels import build_labels, load_task, write_labels

    if not events_dir.is_dir() or not any(events_dir.glob("*.parquet")):
        _fail(f"{events_dir} holds no MEDS event shards (*.parquet); pass the events folder of a pull or a MEDS data/ folder.")
    try:
        if Path(task).suffix in (".yaml", ".yml") and is_aces_config(Path(task)):
            labels, how = aces_labels(Path(task), events_dir, predicates), "ACES"
        else:
            labels, attrition = build_labels(events_dir, load_task(task))
            how = "Forewarn task; " + ", ".join(f"{k} {v['times']:,}" for k, v in attrition.items())
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    write_labels(labels, out)
    positives = sum(labels.column("boolean_value").to_pylist())
    typer.echo(f"{labels.num_rows:,} labels ({positives:,} positive) -> {out}  [{how}]")


@app.command()
def featurize(
    events_dir: Annotated[Path, typer.Argument(help="a folder of MEDS event shards (*.parquet)")],
    labels: Annotated[Path, typer.Argument(help="a labels file (MEDS label schema)")],
    out: Annotated[Path, typer.Option(help="output folder: X.npz, rows.parquet, columns.parquet")],
    windows: Annotated[str, typer.Option(help="comma-separated windows, e.g. 1d,7d,30d,365d,full")] = "30d,365d,full",
    aggs: Annotated[str | None, typer.Option(help="comma-separated aggregations (default: Forewarn's set)")] = None,
    splits: Annotated[Path | None, typer.Option(help="subject splits (subject_id, split); default: a seeded hash")] = None,
    codes: Annotated[Path | None, typer.Option(help="metadata/codes.parquet for readable names and parent codes")] = None,
    min_code_subjects: Annotated[int, typer.Option(min=1)] = 11,
    workers: Annotated[int, typer.Option(min=0, help="worker processes; 0 = one per core")] = 1,
) -> None:
    """Windowed features at the label times (outside a flow); the vocabulary comes from the train split."""
    setup_environment()
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    from forewarn.features.featurize import FeatureConfig, subjects_by_shard
    from forewarn.features.featurize import featurize as run_featurize
    from forewarn.features.labels import assign_splits

    try:
        subjects_by_shard(events_dir)
        options = {"windows": windows.split(","), "min_code_subjects": min_code_subjects, "n_workers": workers}
        if aggs:
            options["aggs"] = aggs.split(",")
        config = FeatureConfig(**options)
        table = pq.read_table(labels)
        if splits is not None:
            split_frame = pd.read_parquet(splits)
        else:
            ids = np.unique(table.column("subject_id").to_numpy())
            split_frame = pd.DataFrame({"subject_id": ids, "split": assign_splits(ids)})
        codes = codes or next((p for p in (events_dir.parent / "metadata" / "codes.parquet",) if p.is_file()), None)
        matrix = run_featurize(events_dir, table, split_frame, out, config, codes_path=codes)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    shape = json.loads((matrix.dir / "shape.json").read_text())
    typer.echo(f"{shape['rows']:,} rows x {shape['columns']:,} columns ({shape['nonzeros']:,} non-zero) -> {matrix.dir}")


@app.command()
def score(
    model: Annotated[str, typer.Argument(help="a registered model: NAME (its champion), NAME@ALIAS or NAME/VERSION, "
                                              "e.g. forewarn-t2d_2y-academic")],
    events_dir: Annotated[Path, typer.Argument(help="the site's de-identified MEDS events (a pull's events folder)")],
    out: Annotated[Path, typer.Option(help="the predictions file to write (MEDS prediction schema, parquet)")],
    times: Annotated[Path | None, typer.Option(help="parquet of subject_id and prediction_time to score (boolean_value "
                                                    "kept where present), e.g. a labels file from `forewarn label`")] = None,
    task: Annotated[str | None, typer.Option(help="instead of --times: the model's task (built-in name or YAML); scores "
                                                  "each eligible person at their latest prediction time")] = None,
    eligible: Annotated[bool, typer.Option(help="as --task, with the task definition the model's run recorded")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="the MLflow store holding the model (default: "
                                                          "$MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)")] = None,
    codes: Annotated[Path | None, typer.Option(help="metadata/codes.parquet for parent codes (default: beside the "
                                                    "events folder)")] = None,
    workers: Annotated[int, typer.Option(min=0, help="worker processes; 0 = one per core")] = 1,
    by_risk: Annotated[bool, typer.Option(help="write the rows highest risk first (a worklist) instead of in the "
                                               "times' order")] = False,
    alert_budget: Annotated[float | None, typer.Option(min=0, max=1000, help="alerts per 1,000 rows: the highest risks "
                                                        "alert instead of the model's threshold")] = None,
    recalibrate_here: Annotated[bool, typer.Option(help="another site's model: its risks from the calibrator its "
                                                        "external validation at this site (the events' pull) fitted on "
                                                        "this site's tuning split")] = False,
) -> None:
    """Score prediction times with a registered model, its columns made as its study made them (stays at the site)."""
    setup_environment()
    from mlflow.exceptions import MlflowException

    from forewarn.evaluation.validation import local_calibrator
    from forewarn.features.featurize import FeatureConfig
    from forewarn.features.labels import load_task
    from forewarn.flows import tracking
    from forewarn.flows.score import read_times
    from forewarn.flows.score import score as run_score

    try:
        if sum((times is not None, task is not None, eligible)) != 1:
            _fail("give one of --times (a parquet of subject_id and prediction_time), --task (the model's task) or "
                  "--eligible (the task its run recorded); the last two score each eligible person at their latest "
                  "prediction time.")
        tracking.configure(tracking_uri)
        table = read_times(times) if times is not None else None
        codes = codes or next((p for p in (events_dir.parent / "metadata" / "codes.parquet",) if p.is_file()), None)
        recalibration = here_recalibration(model, events_dir) if recalibrate_here else None
        summary = run_score(model, events_dir, table, out, task=load_task(task) if task else None, eligible=eligible,
                            codes_path=codes, speed=FeatureConfig(n_workers=workers), by_risk=by_risk,
                            alert_budget=alert_budget, calibrator=local_calibrator(recalibration))
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    except (OSError, MlflowException) as exc:
        _fail(f"could not read {model} from the MLflow store ({tracking.redacted_uri()}): {exc}")
    if summary["eligibility"]:
        e = summary["eligibility"]
        typer.echo(f"{e['candidates']:,} subjects with a candidate prediction time; left out: outcome recorded "
                   f"{e['outcome_recorded']:,}, died {e['died']:,}, age (or no birth recorded) {e['age']:,}, prior "
                   f"observation {e['prior_observation']:,}; each of the {e['eligible']:,} others at their latest")
    repeated = summary["rows"] - summary["distinct"]
    if recalibration is not None and recalibration["method"] == "shipped":
        typer.echo(f"risks from the model's own calibrator: its external validation here (MLflow run "
                   f"{recalibration['run_id']}) found no calibrator fitted on this site's tuning split that beat it")
    elif recalibration is not None:
        typer.echo(f"risks from the {recalibration['method']} calibrator fitted on this site's tuning split by the "
                   f"model's external validation here (MLflow run {recalibration['run_id']}), not its own")
    typer.echo(f"scored {summary['rows']:,} prediction times of {summary['subjects']:,} subjects with {summary['model']} "
               f"({summary['task']}, trained at {summary['trained_at']}) in {summary['seconds']} s -> {summary['out']}")
    if repeated:
        typer.echo(f"  {repeated:,} of the rows repeat an earlier row's subject and time (every row is kept"
                   f"{', in its place' if not by_risk else ''})")
    if summary["parent_codes_unread"]:
        typer.echo(f"  no codes file beside {events_dir} (../metadata/codes.parquet) nor --codes: the model counts "
                   "codes at their parent codes, and without the file no code has any")
    if summary["settings_dropped"]:
        typer.echo(f"  the model was trained with feature settings this version no longer has "
                   f"({', '.join(summary['settings_dropped'])}); its columns are computed without them")
    if summary["unknown_subjects"]:
        typer.echo(f"  {summary['unknown_subjects']:,} of the subjects have no events in {events_dir}: their risk rests "
                   "on nothing; check that the ids are this pull's de-identified ones")
    if summary["alerts_by"] == "budget":
        typer.echo(f"  {summary['alerts']:,} alerts at the budget of {alert_budget:g} per 1,000: the highest risks, down "
                   f"to {summary['budget_cut']:.4f} (ties at the cut by subject and time; predicted_boolean_value)")
    elif summary["threshold"] is None:
        typer.echo("  no alert threshold: a network model's sites each set their own (--alert-budget sets one); "
                   "predicted_boolean_value is null")
    else:
        typer.echo(f"  {summary['alerts']:,} at or above the alert threshold {summary['threshold']:.4f} the model was "
                   "published with (predicted_boolean_value)")
        rate = summary.get("alert_rate")
        if rate and rate["far"]:
            typer.echo(f"  that is {rate['rows']:.1%} of the rows, against the {rate['set_for']:.1%} of its tuning rows "
                       "the threshold was set to alert: these people are unlike those it was set on, so the report's "
                       "sensitivity and PPV do not hold here; --alert-budget sets the number of alerts instead")
        pulled_at = pull_site(events_dir)
        if pulled_at is not None and pulled_at != summary["trained_at"]:
            typer.echo(f"  the model was trained at {summary['trained_at']} and these events are {pulled_at}'s: its "
                       f"threshold {'was' if recalibration else 'and calibration were'} set for "
                       f"{summary['trained_at']}'s people; --alert-budget sets alerts by this site's capacity instead"
                       + ("" if recalibration else ", and --recalibrate-here takes its risks from the calibrator its "
                          "external validation here fitted"))


@app.command()
def worklist(
    study: Annotated[Path, typer.Argument(help="the study YAML")],
    site: Annotated[str | None, typer.Option(help="one site of the study (default: each; a site whose work folder "
                                                  "is elsewhere shows none)")] = None,
    task: Annotated[str | None, typer.Option(help="one task of the study (default: each)")] = None,
) -> None:
    """Show each site's latest worklist with its alerts and follow-up (exact counts: run it at the site)."""
    from forewarn.features.labels import load_task
    from forewarn.flows.study import load_study
    from forewarn.flows.worklist import describe, folder_of

    try:
        parsed = load_study(study)
        names = [load_task(t).name for t in parsed.tasks]
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    sites = [s for s in parsed.sites if site in (None, s.name)]
    tasks = [t for t in names if task in (None, t)]
    if not sites or not tasks:
        _fail(f"{study} has no {'site ' + repr(site) if not sites else 'task ' + repr(task)}; its sites are "
              f"{[s.name for s in parsed.sites]} and its tasks {names}.")
    for s in sites:
        folder = folder_of(s, parsed)
        for t in tasks:
            path, error = folder / f"{t}.json", folder / f"{t}.error.json"
            if path.is_file():
                try:
                    lines = describe(json.loads(path.read_text()))
                except (ValueError, KeyError, TypeError) as exc:
                    lines = [f"{path} cannot be read ({type(exc).__name__}: {exc})"]
            elif error.is_file():
                lines = [f"no worklist tonight; why: {error}"]
            else:
                lines = [f"no worklist in {folder}" + ("" if parsed.worklist.enabled else " (worklists are off in the "
                                                       "study: worklist.enabled)")]
            typer.echo(f"{s.name}  {t}  {lines[0]}")
            for line in lines[1:]:
                typer.echo(f"  {line}")


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="port to listen on")] = 5000,
    backend_store_uri: Annotated[str | None, typer.Option(
        help="the MLflow store the flows write to, e.g. postgresql+psycopg://forewarn@db.example.org/mlflow "
             "[default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db]")] = None,
    artifact_root: Annotated[str | None, typer.Option(
        help="artifact location for experiments created from the UI; the shared folder or URI of the study's "
             "tracking.artifact_root [default: $FOREWARN_ARTIFACT_ROOT, else beside the SQLite file or <cwd>/mlruns/artifacts]")] = None,
    host: Annotated[str, typer.Option(
        help="address to bind; anything but 127.0.0.1 exposes every run and model without a login: "
             "put it behind the hospital's authenticating reverse proxy")] = "127.0.0.1",
    allowed_hosts: Annotated[str | None, typer.Option(
        help="comma-separated Host names the UI answers to (the proxy's public name), beyond localhost and private IPs")] = None,
) -> None:
    """Start the MLflow UI over the same store the flows write to (a team's PostgreSQL store too)."""
    setup_environment()
    from forewarn.flows import tracking

    uri, root = tracking.resolve_store(backend_store_uri, artifact_root)
    if not tracking.is_database_uri(uri):
        _fail(f"--backend-store-uri must be a database URL (postgresql+psycopg://..., sqlite:///...); got {tracking.redact_uri(uri)!r}. "
              "An MLflow server serves its own UI.")
    tracking.make_local_root(root)
    argv, env = tracking.ui_command(backend_store_uri=uri, artifact_root=root, host=host, port=port, allowed_hosts=allowed_hosts)
    typer.echo(f"MLflow UI on http://{host}:{port} over {tracking.redact_uri(uri)} (artifacts of new experiments: {root})")
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo("Listening beyond this machine: MLflow has no login here; serve it only behind an authenticating proxy.")
    os.execvpe(argv[0], argv, {**os.environ, **env})


def main() -> None:
    app()


if __name__ == "__main__":
    main()
