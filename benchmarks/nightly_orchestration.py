"""Nightly-flow wall time, orchestration overhead, rerun and Dask LocalCluster (issue 6).

    python benchmarks/nightly_orchestration.py --people 50000 --out /tmp/fw-orch-50k
    python benchmarks/nightly_orchestration.py --people 500000 --tasks t2d_2y --skip-dask --out /tmp/fw-orch-500k

In one process:

0. generate the two-site demo network (timed on its own; not part of any wall time).
   ``--split equal`` (default) writes people/2 per site with ``generate_site`` and the
   same per-site seeds as ``generate_network``; ``--split demo`` uses ``generate_network``
   (academic 40%, community 60%);
1. start a Prefect server (``prefect_test_harness``: a real API server in a subprocess,
   its SQLite database in a temporary folder) and time its startup, then a trivial flow
   twice (the engine's one-time warm-up, and the per-flow floor);
2. run 1, cold, ``executor: local``: fresh work folders, fresh MLflow SQLite store;
3. run 2, the same study again on unchanged data: every stage must be reused and no
   MLflow run created;
4. run 3 (unless ``--skip-dask``): fresh folders and store, ``executor: dask`` on a
   ``distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``, each
   site pulled in ``--pull-parts`` parts (default 2): pull parts and featurization shards
   are Prefect tasks on the cluster (``DaskTaskRunner``), XGBoost trains with ``xgboost.dask``.

For each run: wall time of ``run_nightly(study)``; the compute seconds of every stage that
computed, from its ``.stage.json`` marker, summed by stage kind; MLflow seconds, i.e. the
time spent inside ``forewarn.flows.tracking``'s public functions (each wrapped with a
timer before the flow runs; nested calls count once), split into calls made inside a
stage's compute and calls made between stages; and

    stage time         = wall-clock time during which at least one stage was computing
                         (the union of the stages' [end - seconds, end] intervals, end being
                         the marker's mtime: the two site pulls run concurrently, so the
                         plain sum of stage seconds can exceed the time they took)
    non-MLflow compute = stage time - MLflow seconds inside stages
    Prefect + glue     = wall - stage time - MLflow seconds between stages
    overhead share     = (wall - non-MLflow compute) / wall
                       = (MLflow seconds + Prefect + glue) / wall

"Glue" is everything in the flow process that is neither a stage nor MLflow: Prefect's
task and flow-run bookkeeping, hashing the sources for the pull keys, loading cached
stage results, the Prefect artifact, pruning. Peak RSS is sampled every 0.25 s: the flow
process alone, and the whole process tree (Prefect server, featurize pools, Dask workers).

Writes ``<out>/nightly_orchestration.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import yaml

TASKS = ["t2d_2y", "ckd3_2y", "pancreatic_cancer_1y"]
DESIGNS = ["internal", "external", "temporal"]
TEMPORAL_FROM = "2021-07-01"

_tls = threading.local()


# --- instrumentation ------------------------------------------------------------------------


class Probe:
    """MLflow timers on ``forewarn.flows.tracking`` and stage records from ``StageCache.run``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.mlflow_in_stage = 0.0
            self.mlflow_between = 0.0
            self.mlflow_by_fn: dict[str, float] = defaultdict(float)
            self.mlflow_calls: Counter = Counter()
            self.stages: list[dict] = []

    def install(self) -> None:
        from forewarn.flows import cache, tracking

        for name, fn in list(vars(tracking).items()):
            if inspect.isfunction(fn) and fn.__module__ == tracking.__name__ and not name.startswith("_"):
                setattr(tracking, name, self._timed(name, fn))
        original = cache.StageCache.run
        probe = self

        @functools.wraps(original)
        def run(self, stage, key, compute, **kwargs):
            def inside(out):
                _tls.stage_depth = getattr(_tls, "stage_depth", 0) + 1
                try:
                    return compute(out)
                finally:
                    _tls.stage_depth -= 1

            result = original(self, stage, key, inside, **kwargs)
            with probe.lock:
                probe.stages.append({"site": self.root.parent.parent.name, "stage": stage, "hit": result.hit,
                                     "seconds": result.seconds})
            return result

        cache.StageCache.run = run

    def _timed(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if getattr(_tls, "mlflow_depth", 0):
                return fn(*args, **kwargs)
            _tls.mlflow_depth = 1
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                _tls.mlflow_depth = 0
                with self.lock:
                    if getattr(_tls, "stage_depth", 0):
                        self.mlflow_in_stage += elapsed
                    else:
                        self.mlflow_between += elapsed
                    self.mlflow_by_fn[name] += elapsed
                    self.mlflow_calls[name] += 1

        return timed


class RssSampler:
    """Peak RSS of this process and of its whole process tree, sampled; and the machine's
    load while it runs: mean 1-minute load average, and the CPU seconds used by processes
    outside this tree (the machine's busy CPU time minus this tree's)."""

    def __init__(self, interval: float = 0.25) -> None:
        import psutil

        self.me = psutil.Process()
        self.interval = interval
        self.peak_self = self.peak_tree = 0
        self.loads: list[float] = []
        self.cpu_first: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}
        self.kind: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _busy(times) -> float:
        return sum(v for k, v in times._asdict().items() if k not in ("idle", "iowait", "guest", "guest_nice"))

    def _sample(self, first: bool = False) -> None:
        import psutil

        procs = [self.me, *self.me.children(recursive=True)]
        tree = 0
        for proc in procs:
            try:
                rss = proc.memory_info().rss
                cpu = proc.cpu_times()
                used = cpu.user + cpu.system
                if proc.pid == self.me.pid:
                    self.peak_self = max(self.peak_self, rss)
                tree += rss
            except psutil.Error:
                continue
            self.cpu_first.setdefault(proc.pid, used if first else 0.0)
            self.cpu_last[proc.pid] = used
            if proc.pid not in self.kind:
                self.kind[proc.pid] = self._kind(proc)
        self.peak_tree = max(self.peak_tree, tree)
        self.loads.append(os.getloadavg()[0])

    def _kind(self, proc) -> str:
        if proc.pid == self.me.pid:
            return "flow process"
        try:
            cmd = " ".join(proc.cmdline())
        except Exception:  # noqa: BLE001
            return "other children"
        if "prefect.server" in cmd:
            return "Prefect server"
        if "multiprocessing" in cmd or "distributed" in cmd or "forkserver" in cmd:
            return "worker processes (featurize pool, Dask)"
        return "other children"

    def cpu_by_kind(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for pid, last in self.cpu_last.items():
            out[self.kind.get(pid, "other children")] += last - self.cpu_first[pid]
        return {k: round(v, 1) for k, v in out.items()}

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        import psutil

        self.started = time.perf_counter()
        self.sys_busy0 = self._busy(psutil.cpu_times())
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import psutil

        self._stop.set()
        self._thread.join()
        self._sample()
        self.seconds = time.perf_counter() - self.started
        self.sys_busy = self._busy(psutil.cpu_times()) - self.sys_busy0
        self.own_cpu = sum(self.cpu_last[p] - self.cpu_first[p] for p in self.cpu_last)

    def load(self) -> dict:
        cores = os.cpu_count() or 1
        return {"mean_loadavg_1min": round(sum(self.loads) / len(self.loads), 2) if self.loads else None,
                "machine_busy_cpu_s": round(self.sys_busy, 1), "this_tree_cpu_s": round(self.own_cpu, 1),
                "other_processes_cpu_s": round(max(self.sys_busy - self.own_cpu, 0.0), 1),
                "other_processes_cores": round(max(self.sys_busy - self.own_cpu, 0.0) / self.seconds, 2),
                "this_tree_cpu_by_process_s": self.cpu_by_kind(),
                "cores": cores}


def machine_load() -> dict:
    import psutil

    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "cpu_percent": psutil.cpu_percent(interval=1.0),
            "at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")}


# --- setup ----------------------------------------------------------------------------------


def generate(folder: Path, people: int, seed: int, split: str) -> tuple[dict[str, Path], dict[str, int], float]:
    from forewarn.records.demo import SITES, generate_network, generate_site, site_seed

    started = time.perf_counter()
    if split == "demo":
        paths = generate_network(folder, people=people, seed=seed)
        total = sum(p.share for p in SITES.values())
        counts, left = {}, people
        for i, (site, profile) in enumerate(SITES.items()):  # as generate_network splits
            n = left if i == len(SITES) - 1 else max(1, round(people * profile.share / total))
            counts[site], left = n, left - n
    else:
        paths, counts, left = {}, {}, people
        for i, (site, profile) in enumerate(SITES.items()):
            n = left if i == len(SITES) - 1 else people // len(SITES)
            left -= n
            paths[site] = folder / site / "omop.duckdb"
            generate_site(paths[site], profile, n, site_seed(seed, site))
            counts[site] = n
    return paths, counts, time.perf_counter() - started


def write_study(run_dir: Path, network: dict[str, Path], tasks: list[str], designs: list[str],
                executor: dict | None) -> Path:
    """The demo study (``demo_study_yaml``) with the benchmark's tasks and designs, its own
    MLflow SQLite store and work folders under ``run_dir``."""
    from forewarn.flows.study import demo_study_yaml

    base = network[next(iter(network))].parent.parent
    data = yaml.safe_load(demo_study_yaml(network, base))
    data["tasks"] = tasks
    data["validation"] = {"designs": designs} | ({"temporal_from": TEMPORAL_FROM} if "temporal" in designs else {})
    for site in data["sites"]:
        site["source"]["location"] = str((base / site["source"]["location"]).resolve())
        site["workdir"] = str(run_dir / "sites" / site["name"] / "work")
    data["tracking"] = {"uri": f"sqlite:///{run_dir / 'mlruns' / 'mlflow.db'}"}
    if executor:
        data["executor"] = executor
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def markers(study) -> dict[str, dict]:
    """Every ``.stage.json`` under the sites' stage folders: path -> {site, stage, seconds, mtime}."""
    found = {}
    for site in study.sites:
        root = site.workdir / "stages"
        for marker in root.glob("*/*/.stage.json"):
            record = json.loads(marker.read_text())
            found[str(marker)] = {"site": site.name, "stage": record["stage"], "seconds": float(record["seconds"]),
                                  "mtime": marker.stat().st_mtime_ns, "end": marker.stat().st_mtime}
    return found


def union(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def stage_kind(stage: str) -> str:
    if stage.startswith("mlflow-"):
        return "mlflow-" + stage.split("-")[1]
    if stage.startswith("champion-features-"):
        return "features (champion cols)"
    return stage.split("-")[0]


def mlflow_counts(uri: str) -> dict[str, int]:
    import mlflow
    from mlflow.entities import ViewType

    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=50_000) if experiments else []
    versions = client.search_model_versions(max_results=10_000)
    return {"runs": len(runs), "model_versions": len(versions)}


# --- one run ---------------------------------------------------------------------------------


def run_once(label: str, study, probe: Probe) -> dict:
    from forewarn.flows.nightly import run_nightly

    uri = study.tracking.uri
    before_markers = markers(study)
    before_runs = mlflow_counts(uri) if Path(uri.removeprefix("sqlite:///")).is_file() else {"runs": 0, "model_versions": 0}
    load_before = machine_load()
    probe.reset()
    print(f"[{time.strftime('%H:%M:%S')}] {label}: starting", flush=True)
    with RssSampler() as rss:
        t_start, started = time.time(), time.perf_counter()
        state, results = run_nightly(study)
        wall = time.perf_counter() - started
        t_end = time.time()
    load_after = machine_load()
    after_markers = markers(study)
    new = {p: m for p, m in after_markers.items() if p not in before_markers or before_markers[p]["mtime"] != m["mtime"]}
    after_runs = mlflow_counts(uri)

    by_kind: dict[str, float] = defaultdict(float)
    count_kind: Counter = Counter()
    for m in new.values():
        by_kind[stage_kind(m["stage"])] += m["seconds"]
        count_kind[stage_kind(m["stage"])] += 1
    stage_seconds = sum(m["seconds"] for m in new.values())
    stage_time = union([(max(m["end"] - m["seconds"], t_start), min(m["end"], t_end)) for m in new.values()])
    mlflow_total = probe.mlflow_in_stage + probe.mlflow_between
    compute = stage_time - probe.mlflow_in_stage
    glue = wall - stage_time - probe.mlflow_between
    computed_calls = [s for s in probe.stages if not s["hit"]]
    record = {
        "label": label,
        "executor": study.executor.kind,
        "state": state.type.value,
        "wall_s": round(wall, 2),
        "stages_computed": len(new),
        "stage_calls_in_flow_process": len(probe.stages),
        "stage_calls_computed_in_flow_process": len(computed_calls),
        "stage_seconds": round(stage_seconds, 2),
        "stage_time_s": round(stage_time, 2),
        "stage_seconds_by_kind": {k: round(v, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "stages_by_kind": dict(count_kind),
        "mlflow_s": round(mlflow_total, 2),
        "mlflow_in_stages_s": round(probe.mlflow_in_stage, 2),
        "mlflow_between_stages_s": round(probe.mlflow_between, 2),
        "mlflow_by_function_s": {k: round(v, 3) for k, v in sorted(probe.mlflow_by_fn.items(), key=lambda kv: -kv[1])},
        "mlflow_calls": dict(probe.mlflow_calls),
        "non_mlflow_compute_s": round(compute, 2),
        "prefect_glue_s": round(glue, 2),
        "overhead_share": round((wall - compute) / wall, 4) if wall else None,
        "overhead_share_plain_sum": round((wall - (stage_seconds - probe.mlflow_in_stage)) / wall, 4) if wall else None,
        "prefect_glue_share": round(glue / wall, 4) if wall else None,
        "mlflow_share": round(mlflow_total / wall, 4) if wall else None,
        "peak_rss_flow_process_mb": round(rss.peak_self / 2**20),
        "peak_rss_process_tree_mb": round(rss.peak_tree / 2**20),
        "mlflow_runs_before": before_runs["runs"],
        "mlflow_runs_after": after_runs["runs"],
        "model_versions_before": before_runs["model_versions"],
        "model_versions_after": after_runs["model_versions"],
        "results": [{"site": r.site, "task": r.task, "status": r.status, "cached": r.cached, "reason": r.reason,
                     "held_out_auroc": r.metrics.get("held_out/auroc"), "held_out_auprc": r.metrics.get("held_out/auprc"),
                     "version": r.version, "decision": r.decision[:160]} for r in results],
        "load_during": rss.load(),
        "load_before": load_before,
        "load_after": load_after,
    }
    print(f"[{time.strftime('%H:%M:%S')}] {label}: wall {wall:.1f} s, {len(new)} stages computed, "
          f"MLflow {mlflow_total:.1f} s, Prefect+glue {glue:.1f} s, overhead {record['overhead_share']:.1%}, "
          f"state {record['state']}", flush=True)
    return record


# --- report -----------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    runs = report["runs"]
    names = list(runs)
    head = "| | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names)
    rows = [("wall, s", lambda r: f"{r['wall_s']:.1f}"),
            ("stages computed", lambda r: f"{r['stages_computed']}"),
            ("Σ stage compute, s", lambda r: f"{r['stage_seconds']:.1f}"),
            ("stage time (union, concurrent pulls counted once), s", lambda r: f"{r['stage_time_s']:.1f}")]
    kinds: list[str] = []
    for r in runs.values():
        kinds += [k for k in r["stage_seconds_by_kind"] if k not in kinds]
    for k in kinds:
        rows.append((f"  {k}, s (stages)", lambda r, k=k: (f"{r['stage_seconds_by_kind'][k]:.1f} ({r['stages_by_kind'][k]})"
                                                           if k in r["stage_seconds_by_kind"] else "—")))
    rows += [
        ("MLflow, s (in stages + between)", lambda r: f"{r['mlflow_s']:.1f} ({r['mlflow_in_stages_s']:.1f} + {r['mlflow_between_stages_s']:.1f})"),
        ("non-MLflow compute, s", lambda r: f"{r['non_mlflow_compute_s']:.1f}"),
        ("Prefect + glue, s", lambda r: f"{r['prefect_glue_s']:.1f}"),
        ("overhead share (MLflow + Prefect + glue)", lambda r: f"{r['overhead_share']:.1%}"),
        ("  of which Prefect + glue", lambda r: f"{r['prefect_glue_share']:.1%}"),
        ("peak RSS flow process / tree, MB", lambda r: f"{r['peak_rss_flow_process_mb']:,} / {r['peak_rss_process_tree_mb']:,}"),
        ("MLflow runs before → after", lambda r: f"{r['mlflow_runs_before']} → {r['mlflow_runs_after']}"),
        ("mean load average (1 min) during the run", lambda r: f"{r['load_during']['mean_loadavg_1min']}"),
        ("other processes' CPU during the run, cores", lambda r: f"{r['load_during']['other_processes_cores']}"),
        ("this benchmark's CPU / wall (cores)", lambda r: f"{r['load_during']['this_tree_cpu_s'] / r['wall_s']:.2f}"),
        ("Prefect server CPU during the run, s", lambda r: str(r['load_during'].get('this_tree_cpu_by_process_s', {}).get('Prefect server', '—'))),
    ]
    lines = [head] + ["| " + label + " | " + " | ".join(fn(runs[n]) for n in names) + " |" for label, fn in rows]
    out = "\n".join(lines)
    if "auroc" in report:
        out += "\n\n| site | task | AUROC local | AUROC LocalCluster | Δ |\n|---|---|---:|---:|---:|\n"
        for row in report["auroc"]:
            local, dask = row["local"], row["dask"]
            delta = f"{dask - local:+.4f}" if local is not None and dask is not None else "—"
            out += f"| {row['site']} | {row['task']} | {local if local is None else f'{local:.4f}'} | " \
                   f"{dask if dask is None else f'{dask:.4f}'} | {delta} |\n"
    return out


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=50_000, help="people in the whole network")
    parser.add_argument("--split", choices=["equal", "demo"], default="equal",
                        help="equal: people/2 per site; demo: generate_network's 40/60 split")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    parser.add_argument("--designs", default=",".join(DESIGNS), help="comma-separated validation designs")
    parser.add_argument("--out", type=Path, default=Path("/tmp/forewarn-orchestration"), help="a folder (emptied first)")
    parser.add_argument("--skip-dask", action="store_true", help="no LocalCluster run")
    parser.add_argument("--skip-local", action="store_true",
                        help="no local runs (cold and rerun): the LocalCluster run alone, e.g. beside a --skip-dask run")
    parser.add_argument("--compare-with", type=Path,
                        help="a nightly_orchestration.json of a --skip-dask run on the same network, for the AUROC table")
    parser.add_argument("--pull-parts", type=int, default=2, help="executor.pull_parts of the LocalCluster run")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic network")
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    designs = [d for d in args.designs.split(",") if d]

    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    os.environ["PREFECT_HOME"] = str(out / "prefect-home")  # before Prefect is imported
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("FOREWARN_ARTIFACT_ROOT", None)
    from forewarn.flows.cli import setup_environment

    setup_environment()  # the CLI's environment: telemetry off, OMP_WAIT_POLICY, forewarn log lines on stderr
    os.chdir(out)

    import_started = time.perf_counter()
    from prefect import flow
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    import forewarn.flows.nightly  # noqa: F401  (imports before any clock)
    from forewarn.flows.study import load_study
    imports_s = time.perf_counter() - import_started

    report: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "people": args.people, "split": args.split, "tasks": tasks, "designs": designs, "seed": args.seed,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "memory_gb": round(__import__("psutil").virtual_memory().total / 2**30, 1)},
        "load_at_start": machine_load(),
        "imports_s": round(imports_s, 2),
        "code": code_info(),
        "runs": {},
    }
    print(f"load at start: {report['load_at_start']}", flush=True)

    network, counts, gen_s = generate(out / "network", args.people, args.seed, args.split)
    report["network"] = {"people_per_site": counts, "generate_s": round(gen_s, 2),
                         "bytes": {s: p.stat().st_size for s, p in network.items()}}
    print(f"network: {counts} in {gen_s:.1f} s", flush=True)

    probe = Probe()
    probe.install()

    @flow(name="orchestration-noop")
    def noop() -> int:
        return 1

    started = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=180):
        report["prefect_server_startup_s"] = round(time.perf_counter() - started, 2)
        api = PREFECT_API_URL.value()
        assert api, "prefect_test_harness did not set PREFECT_API_URL"
        os.environ["PREFECT_API_URL"] = api  # Dask worker processes read it from the environment
        report["prefect_api_url"] = api
        t = time.perf_counter()
        noop()
        report["prefect_first_flow_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        noop()
        report["prefect_noop_flow_s"] = round(time.perf_counter() - t, 2)
        print(f"Prefect server up in {report['prefect_server_startup_s']} s; trivial flow: first "
              f"{report['prefect_first_flow_s']} s, then {report['prefect_noop_flow_s']} s", flush=True)

        if not args.skip_local:
            study = load_study(write_study(out / "local", network, tasks, designs, None))
            report["runs"]["cold (local)"] = run_once("run 1, cold, local", study, probe)
            report["runs"]["rerun (local)"] = run_once("run 2, rerun on unchanged data", study, probe)
            rerun = report["runs"]["rerun (local)"]
            report["rerun_check"] = {
                "no_stage_computed": rerun["stages_computed"] == 0 and rerun["stage_calls_computed_in_flow_process"] == 0,
                "no_new_mlflow_runs": rerun["mlflow_runs_after"] == rerun["mlflow_runs_before"],
                "no_new_model_versions": rerun["model_versions_after"] == rerun["model_versions_before"],
                "all_cached": all(r["cached"] for r in rerun["results"] if r["status"] == "published"),
            }
            print(f"rerun check: {report['rerun_check']}", flush=True)
            _write(out, report)
        elif args.compare_with:
            other = json.loads(args.compare_with.read_text())
            if other.get("people") != args.people or other.get("seed") != args.seed:
                raise SystemExit(f"--compare-with {args.compare_with}: people/seed {other.get('people')}/"
                                 f"{other.get('seed')} differ from this run's {args.people}/{args.seed}")
            report["runs"]["cold (local)"] = other["runs"]["cold (local)"]
            report["local_from"] = str(args.compare_with)

        if not args.skip_dask:
            from distributed import LocalCluster
            from prefect.settings import PREFECT_API_URL

            os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the workers' tasks report to the harness's server
            t = time.perf_counter()
            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                   scheduler_port=0)
            try:
                from distributed import Client

                with Client(cluster.scheduler_address, set_as_default=False) as c:
                    c.wait_for_workers(2, timeout=120)
                report["dask_cluster_startup_s"] = round(time.perf_counter() - t, 2)
                executor = {"kind": "dask", "scheduler_address": cluster.scheduler_address, "pull_parts": args.pull_parts}
                dstudy = load_study(write_study(out / "dask", network, tasks, designs, executor))
                report["runs"]["cold (LocalCluster)"] = run_once("run 3, cold, Dask LocalCluster", dstudy, probe)
            finally:
                cluster.close()
            local_run = report["runs"].get("cold (local)", {"results": []})
            local = {(r["site"], r["task"]): r["held_out_auroc"] for r in local_run["results"]}
            dask = {(r["site"], r["task"]): r["held_out_auroc"] for r in report["runs"]["cold (LocalCluster)"]["results"]}
            report["auroc"] = [{"site": s, "task": t, "local": local.get((s, t)), "dask": dask.get((s, t))}
                               for s, t in sorted(set(local) | set(dask))]
    report["load_at_end"] = machine_load()
    _write(out, report)
    print()
    print(markdown(report))


def code_info() -> dict:
    """Which Forewarn ran: the package folder, its code digest (the stage keys' one) and,
    when that folder is a git checkout, its commit."""
    import subprocess

    import forewarn.flows.nightly as nightly
    from forewarn.flows.cache import code_digest

    folder = Path(nightly.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True,
                                timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"flows_folder": str(folder), "code_digest": code_digest(), "git_head": commit or None}


def _write(out: Path, report: dict) -> None:
    (out / "nightly_orchestration.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
