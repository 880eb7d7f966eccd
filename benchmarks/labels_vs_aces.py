"""Forewarn labels against ACES (es-aces) on the same MEDS events and the same task.

    .venv/bin/python benchmarks/labels_vs_aces.py --people 10000 100000

For each size, one demo site (academic profile) is generated and pulled into MEDS
(not timed); then each tool labels the type-2-diabetes task at every outpatient visit
(the task of tests/test_aces.py, defined both ways) in its own process. Prints wall
time, CPU time (all threads of the child: what a loaded machine does not inflate), peak
RSS (the child's VmHWM), RSS after imports, the 1-minute load average when the child
finished, label counts and whether the two label sets agree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Peak RSS is the child's own VmHWM: ``getrusage(RUSAGE_SELF).ru_maxrss`` survives execve
# on Linux, so a child started by a driver that has just generated a large site would
# report the driver's peak instead of its own.
CHILD = """
import json, os, sys, time
from pathlib import Path
import pyarrow.parquet as pq
import yaml
from forewarn.features.labels import build_labels, parse_task, write_labels
from forewarn.features.aces_tasks import aces_labels
import aces.query, aces.predicates  # imported before the clock starts, like Forewarn's modules
def status_mb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
tool, events, out, config = sys.argv[1:5]
import_mb = status_mb("VmRSS")
start, cpu = time.perf_counter(), time.process_time()
if tool == "forewarn":
    labels, _ = build_labels(Path(events), parse_task(yaml.safe_load(Path(config).read_text())))
else:
    labels = aces_labels(Path(config), Path(events))
write_labels(labels, Path(out))
print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu, "labels": labels.num_rows,
                  "peak_rss_mb": status_mb("VmHWM"), "import_rss_mb": import_mb, "load_avg": os.getloadavg()[0]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workdir", type=Path, default=None, help="keep generated data here (default: a temp dir)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    import pyarrow.parquet as pq
    import yaml
    from test_aces import ACES_T2D, FOREWARN_T2D

    from forewarn.records.deid import DeidConfig
    from forewarn.records.demo import SITES, generate_site
    from forewarn.records.omop import pull_omop

    root = args.workdir or Path(tempfile.mkdtemp(prefix="forewarn-labels-bench-"))
    ours, theirs = root / "t2d.forewarn.yaml", root / "t2d.aces.yaml"
    root.mkdir(parents=True, exist_ok=True)
    ours.write_text(yaml.safe_dump(FOREWARN_T2D))
    theirs.write_text(ACES_T2D)
    print("| people | events | tool | labels | seconds | speed-up | CPU s (all threads) | CPU ratio | peak RSS MB "
          "| post-import RSS MB | load avg | agreement |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for people in args.people:
        site = root / f"site-{people}"
        if not (site / "pull" / "events").is_dir():
            generate_site(site / "omop.duckdb", SITES["academic"], people, seed=5)
            pull_omop(site / "omop.duckdb", site / "pull", site="bench", config=DeidConfig(b"benchmark-secret-0123456789"))
        events = site / "pull" / "events"
        n_events = sum(pq.ParquetFile(p).metadata.num_rows for p in events.glob("*.parquet"))
        results = {}
        for tool, config in (("forewarn", ours), ("aces", theirs)):
            out = site / f"labels-{tool}.parquet"
            proc = subprocess.run([sys.executable, "-c", CHILD, tool, str(events), str(out), str(config)], capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{tool} failed:\n{proc.stderr[-3000:]}")
            results[tool] = json.loads(proc.stdout.strip().splitlines()[-1])
        agreement = compare(site / "labels-forewarn.parquet", site / "labels-aces.parquet", events)
        for tool, r in results.items():
            speed = results["aces"]["seconds"] / r["seconds"]
            cpu_ratio = results["aces"]["cpu_seconds"] / r["cpu_seconds"]
            print(f"| {people:,} | {n_events:,} | {tool} | {r['labels']:,} | {r['seconds']:.2f} | {speed:.1f}x "
                  f"| {r['cpu_seconds']:.2f} | {cpu_ratio:.1f}x | {r['peak_rss_mb']:,.0f} | {r['import_rss_mb']:,.0f} "
                  f"| {r['load_avg']:.1f} | {agreement if tool == 'forewarn' else ''} |", flush=True)


def compare(ours: Path, theirs: Path, events: Path) -> str:
    """Same labels on shared rows? Forewarn also keeps outcomes of subjects whose record
    ends inside the horizon (as PLP's includeAllOutcomes); ACES cannot express that."""
    import duckdb

    con = duckdb.connect()
    shared, disagree, only_theirs = con.execute(
        f"""
        SELECT count(*) FILTER (WHERE a.subject_id IS NOT NULL AND b.subject_id IS NOT NULL),
               count(*) FILTER (WHERE a.boolean_value <> b.boolean_value),
               count(*) FILTER (WHERE a.subject_id IS NULL)
        FROM read_parquet('{ours}') a FULL JOIN read_parquet('{theirs}') b USING (subject_id, prediction_time)
        """
    ).fetchone()
    only_ours, short_positive = con.execute(
        f"""
        WITH last AS (SELECT subject_id, max(time) AS last FROM read_parquet('{events}/*.parquet') GROUP BY 1)
        SELECT count(*), count(*) FILTER (WHERE a.boolean_value AND l.last < a.prediction_time + INTERVAL 730 DAY)
        FROM read_parquet('{ours}') a ANTI JOIN read_parquet('{theirs}') b USING (subject_id, prediction_time)
        JOIN last l USING (subject_id)
        """
    ).fetchone()
    if disagree or only_theirs or only_ours != short_positive:
        return f"NO: {disagree} disagree, {only_theirs} only in ACES, {only_ours - short_positive} unexplained"
    return f"same on {shared:,} shared; +{only_ours:,} positives followed < horizon"


if __name__ == "__main__":
    main()
