"""The worklist followed up: what became of the people a night's worklist showed, against
what the model's held-out evaluation promised.

The demo network is generated whole (2015-2024), and a copy of each site's OMOP database
is cut at ``--as-of`` (every event after that day removed, visits, drug exposures and
observation periods ending then, later deaths removed): the sites as they stood that day.
Night 1 runs the nightly flow on the cut copies (each site trains, publishes and writes
its worklist: every eligible person at their latest visit, alerts at the threshold the
model was published with). Night 2 runs the same study on the whole databases, with the
same work folders and MLflow store: the data of the years after ``--as-of`` has arrived,
and each worklist's ``followup`` says what became of night 1's scorings
(``flows.worklist.follow_up``). Printed per site and task: night 1's worklist (people,
alerts), the follow-up's statuses, and the alerts' sensitivity, PPV and alert rate in
follow-up beside the held-out ones at the same threshold (the evaluation's threshold
table, night 1's model), with the lead time; then the calibration of the risks shown over
the resolved scorings (outcome rate, mean risk, observed/expected, calibration in the
large and slope) beside the held-out set's.

    .venv/bin/python benchmarks/prospective.py --people 20000 --as-of 2022-06-30 --workdir /tmp/prospective
    .venv/bin/python benchmarks/prospective.py --follow-up negatives ...   # the label rule until session 33
    .venv/bin/python benchmarks/prospective.py --sample-from population --max-per-subject 3 ...

Run from a checkout: the code measured is the one ``forewarn`` imports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import duckdb

# (table, date column, datetime column or None): rows after the cut are removed
STARTS = [("visit_occurrence", "visit_start_date", "visit_start_datetime"),
          ("condition_occurrence", "condition_start_date", "condition_start_datetime"),
          ("drug_exposure", "drug_exposure_start_date", "drug_exposure_start_datetime"),
          ("measurement", "measurement_date", "measurement_datetime"),
          ("procedure_occurrence", "procedure_date", "procedure_datetime"),
          ("death", "death_date", "death_datetime"),
          ("observation_period", "observation_period_start_date", None)]
# (table, end date column, end datetime column or None): ends after the cut end at it
ENDS = [("visit_occurrence", "visit_end_date", "visit_end_datetime"),
        ("drug_exposure", "drug_exposure_end_date", None),
        ("observation_period", "observation_period_end_date", None)]


def cut(source: Path, dest: Path, as_of: date) -> dict[str, int]:
    """Copy the OMOP DuckDB ``source`` to ``dest`` as it stood at the end of ``as_of``;
    returns the rows removed per table."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    removed = {}
    day, end = f"DATE '{as_of.isoformat()}'", f"TIMESTAMP '{as_of.isoformat()} 23:59:59'"
    with duckdb.connect(str(dest)) as con:
        for table, column, stamp in STARTS:
            where = f"{column} > {day}" + (f" OR {stamp} > {end}" if stamp else "")
            removed[table] = con.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]
            con.execute(f"DELETE FROM {table} WHERE {where}")
        for table, column, stamp in ENDS:
            con.execute(f"UPDATE {table} SET {column} = {day} WHERE {column} > {day}")
            if stamp:
                con.execute(f"UPDATE {table} SET {stamp} = {end} WHERE {stamp} > {end}")
        con.execute("CHECKPOINT")
    return removed


def held_out_at(metrics: dict, threshold: float) -> dict | None:
    """The held-out threshold-table row at ``threshold`` (the operating point's)."""
    rows = [r for r in metrics.get("thresholds", []) if r.get("threshold") is not None
            and abs(r["threshold"] - threshold) < 1e-12]
    return rows[0] if rows else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=20000)
    parser.add_argument("--as-of", type=date.fromisoformat, default=date(2022, 6, 30))
    parser.add_argument("--tasks", default="t2d_2y,ckd3_2y")
    parser.add_argument("--follow-up", choices=["everyone", "negatives"], default="everyone",
                        help="the tasks' follow_up: negatives labels positives whatever their follow-up (the rule "
                             "until session 33)")
    parser.add_argument("--sample-from", choices=["eligible", "population"], default=None,
                        help="the tasks' prediction_times.sample_from (features.labels.PredictionTimes; default: the "
                             "built-in task's)")
    parser.add_argument("--max-per-subject", type=int, default=None,
                        help="the tasks' prediction_times.max_per_subject (default: the built-in task's)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="prospective-"))).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    from forewarn.flows.cli import setup_environment

    setup_environment()  # the command's own settings: no telemetry, quiet Prefect and MLflow, progress lines
    os.environ["PREFECT_HOME"] = str(work / "prefect")  # a Prefect and an MLflow store of the run's own
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(work)

    import yaml
    from prefect.testing.utilities import prefect_test_harness

    from forewarn.features.labels import load_task
    from forewarn.flows.nightly import nightly
    from forewarn.flows.study import parse_study
    from forewarn.records.demo import generate_network

    network = generate_network(work / "network", people=args.people, seed=7)
    cuts = {}
    for site, path in network.items():
        cuts[site] = work / "as-of" / site / "omop.duckdb"
        removed = cut(path, cuts[site], args.as_of)
        print(f"{site}: cut at {args.as_of}: {sum(removed.values()):,} rows after it removed")
    tasks = args.tasks.split(",")
    task_files = []
    for task in tasks:  # the built-in task with the chosen follow_up
        spec = load_task(task)
        times = spec.prediction_times.model_copy(update=(
            {} if args.sample_from is None else {"sample_from": args.sample_from}) | (
            {} if args.max_per_subject is None else {"max_per_subject": args.max_per_subject}))
        spec = spec.model_copy(update={"follow_up": args.follow_up, "prediction_times": times})
        path = work / "tasks" / f"{task}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False))
        task_files.append(str(path))

    def study(sources: dict[str, Path]):
        return parse_study({
            "name": "prospective", "demo": True, "tasks": task_files,
            "sites": [{"name": n, "source": {"location": str(p)}} for n, p in sources.items()],
            "models": {"search": {"trials": 0}}, "validation": {"designs": ["internal"]},
            "worklist": {"enabled": True, "models": ["site"]},
        }, base_dir=work)

    seconds = {}
    with prefect_test_harness(server_startup_timeout=180):
        for night, sources in (("night 1 (as of the cut)", cuts), ("night 2 (everything)", network)):
            started = time.perf_counter()
            nightly(study(sources))
            seconds[night] = round(time.perf_counter() - started, 1)
            if night.startswith("night 1"):  # keep night 1's worklists and the evaluation behind their threshold
                for site in network:
                    folder = work / "sites" / site / "work" / "worklists" / "prospective"
                    shutil.copytree(folder, work / "night1" / site)

    rows, missing = [], []
    for site in network:
        for task in tasks:
            if not (work / "night1" / site / f"{task}.json").exists():
                missing.append(f"{site} {task}")
                continue
            first = json.loads((work / "night1" / site / f"{task}.json").read_text())
            second = json.loads((work / "sites" / site / "work" / "worklists" / "prospective" / f"{task}.json")
                                .read_text())
            stages = work / "sites" / site / "work" / "stages" / f"evaluate-{task}"
            # night 1's evaluation: the one whose operating point is the worklist's threshold
            promised, auroc, calibration = None, None, {}
            for path in sorted(stages.glob("*/metrics.json")):
                metrics = json.loads(path.read_text())
                row = held_out_at(metrics, first["threshold"])
                if row is not None:
                    promised, auroc = row, metrics["held_out"]["xgboost"]["auroc"]
                    calibration = metrics["held_out"]["xgboost"]
            rows.append({"site": site, "task": task, "night1": {k: first[k] for k in ("rows", "alerts", "threshold",
                                                                                         "model")},
                         "followup": second["followup"], "held_out": promised, "held_out_auroc": auroc,
                         "held_out_calibration": {k: calibration.get(k) for k in (
                             "prevalence", "mean_predicted", "calibration_in_the_large", "calibration_slope")}})

    def share(v):
        return "-" if v is None else f"{v:.3f}"

    print(f"\n{args.people:,} people; cut at {args.as_of}; follow_up {args.follow_up}; seconds {seconds}\n")
    print("| site | task | night 1: people / alerts | resolved (outcome / none) | window passed / pending / other "
          "| AUROC: follow-up / held-out | sensitivity: follow-up / held-out | PPV: follow-up / held-out "
          "| alerts per 1,000 resolved: follow-up / held-out | lead time, days (median, quartiles) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f, h, a = r["followup"], r["held_out"] or {}, r["followup"]["alerts"] or {}
        st = f["status"]
        other = sum(v for k, v in st.items() if k not in ("outcome", "no_outcome", "window_passed", "pending"))
        rate = (a["true_positive"] + a["false_positive"]) / a["scorings"] * 1000 if a.get("scorings") else None
        lead = f["lead_time_days"]
        lead_text = "-" if lead is None else f"{lead['median']:g} ({lead['q1']:g}-{lead['q3']:g})"
        rate_text = "-" if rate is None else f"{rate:.0f}"
        held_rate = "-" if h.get("alert_rate") is None else f"{1000 * h['alert_rate']:.0f}"
        print(f"| {r['site']} | {r['task']} | {r['night1']['rows']:,} / {r['night1']['alerts']:,} "
              f"| {st['outcome']:,} / {st['no_outcome']:,} | {st['window_passed']:,} / {st['pending']:,} / {other:,} "
              f"| {share(f['resolved']['auroc'])} / {share(r['held_out_auroc'])} "
              f"| {share(a.get('sensitivity'))} / {share(h.get('sensitivity'))} "
              f"| {share(a.get('ppv'))} / {share(h.get('ppv'))} | {rate_text} / {held_rate} | {lead_text} |")
    print("\nCalibration of the risks shown, over the resolved scorings, beside the held-out set's:\n")
    print("| site | task | outcome rate: follow-up / held-out | mean risk: follow-up / held-out | observed/expected "
          "| calibration in the large: follow-up / held-out | slope: follow-up / held-out |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        f, c = r["followup"]["resolved"], r["held_out_calibration"]
        print(f"| {r['site']} | {r['task']} | {share(f['outcome_rate'])} / {share(c.get('prevalence'))} "
              f"| {share(f.get('mean_risk'))} / {share(c.get('mean_predicted'))} | {share(f.get('observed_to_expected'))} "
              f"| {share(f.get('calibration_in_the_large'))} / {share(c.get('calibration_in_the_large'))} "
              f"| {share(f.get('calibration_slope'))} / {share(c.get('calibration_slope'))} |")
    if missing:
        print(f"\nNo worklist on night 1 (no champion: the night's summary says why): {', '.join(missing)}")
    if args.json:
        args.json.write_text(json.dumps({"people": args.people, "as_of": str(args.as_of), "seconds": seconds,
                                         "follow_up": args.follow_up,
                                         "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
