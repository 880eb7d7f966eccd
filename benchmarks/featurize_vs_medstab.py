"""Forewarn featurization vs MEDS-Tab tabularization, end to end, on demo-network MEDS data.

    bash benchmarks/medstab_env.sh                      # once: MEDS-Tab in its own venv
    python benchmarks/featurize_vs_medstab.py --sizes 200,500,1000 --forewarn-only-sizes 100000,1000000

For every size (people in the demo network) the network is generated and pulled into
MEDS outside the timed part; both sites' ``events/*.parquet`` shards form one MEDS
dataset, and t2d_2y labels (prediction times are outpatient-visit event times) are
built from it. Then each tool runs in its own subprocess, timed (wall) and measured
(peak RSS from ``/usr/bin/time``):

- Forewarn: ``featurize`` (events + labels in, CSR matrix at the label times out).
- MEDS-Tab: ``meds-tab-describe``, ``-tabularize-static``, ``-tabularize-time-series``,
  ``-cache-task`` (wall = sum of the four, peak = the largest). MEDS-Tab needs
  ``input_dir/<split>/<shard>.parquet``, so its input folder is made of symlinks to the
  same shard files (one folder per site); that step is timed with MEDS-Tab.

Each process also records its RSS right after its imports, before it reads any data
(``/proc/self/status`` VmRSS; for MEDS-Tab each step runs as ``python -c "from <the
step's module> import main; <record>; main()"``, which is what its console script
does), so the tables give peak minus post-import RSS: the memory the data takes, with
the imported libraries left out.

Both use windows 1d, 7d, 30d, 365d, full and aggs code/count, value/count, value/sum,
value/sum_sqd, value/min, value/max (+ static/present), every code kept (Forewarn
``min_code_subjects=1``, MEDS-Tab ``min_code_inclusion_count=1``). The matrices are
compared on the columns both have, keyed by (code, agg, window), at the same
(subject_id, prediction_time) rows; a missing entry counts as 0 in the value
comparison. Prints Markdown tables: timings and parity per size, and mismatches per
(agg, window) at the smallest size compared.

``--medstab-variant patched`` (or ``both``) also runs MEDS-Tab from a copy of its package
with three of its bugs fixed (``PATCHES``), to check window semantics value by value; see
benchmarks/medstab_notes.md. ``FVM_KEEP=1`` keeps MEDS-Tab's output for inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

WINDOWS = ["1d", "7d", "30d", "365d", "full"]
AGGS = ["code/count", "value/count", "value/sum", "value/sum_sqd", "value/min", "value/max"]
TASK = "t2d_2y"
RTOL, ATOL = 1e-4, 1e-6


# ----------------------------------------------------------------------------- data


def prepare(people: int, root: Path) -> dict:
    """Generate + pull the demo network (untimed); one MEDS events folder; labels; splits."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from forewarn.features.labels import assign_splits, build_labels, load_task
    from forewarn.records.deid import DeidConfig, load_secret
    from forewarn.records.demo import generate_network
    from forewarn.records.omop import pull_omop

    info_path = root / "info.json"
    if info_path.is_file():
        return json.loads(info_path.read_text())
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    start = time.perf_counter()
    paths = generate_network(root / "net", people=people, seed=7)
    events_dir = root / "events"
    events_dir.mkdir()
    n_subjects = n_events = 0
    for site, db in paths.items():
        result = pull_omop(db, root / "pull" / site, site=site, config=DeidConfig(load_secret(site, demo=True)))
        n_subjects += result.subjects
        n_events += result.events
        for shard in sorted(result.events_dir.glob("*.parquet")):
            (events_dir / f"{site}-{shard.name}").symlink_to(shard.resolve())
    shutil.rmtree(root / "net")  # the OMOP databases are not needed any more
    labels, _ = build_labels(events_dir, load_task(TASK))
    label_dir = root / "labels"
    label_dir.mkdir()
    pq.write_table(labels, label_dir / "labels.parquet")
    subjects = np.unique(labels.column("subject_id").to_numpy())
    pq.write_table(
        pa.table({"subject_id": pa.array(subjects, pa.int64()), "split": pa.array(assign_splits(subjects))}),
        root / "splits.parquet",
    )
    info = {
        "people": people, "subjects": n_subjects, "events": n_events, "labels": labels.num_rows,
        "prepare_s": round(time.perf_counter() - start, 1),
    }
    info_path.write_text(json.dumps(info))
    return info


# ----------------------------------------------------------------------------- running


def measured(cmd: list[str], log: Path, timeout: float | None = None, env: dict | None = None) -> tuple[float, float, int]:
    """Run ``cmd``; return (wall s, peak RSS MB, exit code).

    Peak RSS comes from GNU ``/usr/bin/time`` (max RSS of the command and the children
    it waited for), not from this process's ``wait4``: a child forked from this Python
    process starts with its RSS, which would otherwise be counted.
    """
    rss_file = log.with_name(log.name + ".maxrss")
    rss_file.unlink(missing_ok=True)
    with open(log, "ab") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *cmd],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGINT first: GNU time ignores it while it waits, the command stops, and time
            # still writes the peak RSS so far; SIGKILL whatever is left after a grace period.
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = 124
        wall = time.perf_counter() - start
    try:
        peak_kb = float(rss_file.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        peak_kb = float("nan")
    return wall, peak_kb / 1024, rc


def vmrss_mb(path: Path) -> float:
    """The VmRSS a child wrote (``/proc/self/status`` text), in MB; NaN if missing."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


FOREWARN_CHILD = """
import sys, pandas as pd, pyarrow.parquet as pq
from pathlib import Path
from forewarn.features.featurize import FeatureConfig, featurize
Path(sys.argv[3]).write_text(Path("/proc/self/status").read_text())  # RSS after imports, before data
root, out = Path(sys.argv[1]), Path(sys.argv[2])
labels = pq.read_table(root / "labels" / "labels.parquet")
splits = pd.read_parquet(root / "splits.parquet")
codes = sorted((root / "pull").glob("*/metadata/codes.parquet"))
# Same columns as MEDS-Tab: no ICD-10 / metadata roll-up codes, and one process like MEDS-Tab's
# single worker (options only set where this Forewarn version has them).
extra = dict(rollup_icd10=False, parent_codes=False, n_workers=1)
extra = {{k: v for k, v in extra.items() if k in FeatureConfig.model_fields}}
featurize(root / "events", labels, splits, out,
          FeatureConfig(windows={windows!r}, aggs={aggs!r}, min_code_subjects=1, **extra),
          codes_path=codes[0] if codes else None)
"""


def run_forewarn(root: Path, out: Path) -> tuple[float, float, int, float]:
    """(wall s, peak RSS MB, exit code, RSS after imports MB)."""
    if out.exists():
        shutil.rmtree(out)
    code = FOREWARN_CHILD.format(windows=WINDOWS, aggs=AGGS)
    status = root / "forewarn.import-status"
    status.unlink(missing_ok=True)
    wall, peak, rc = measured([sys.executable, "-c", code, str(root), str(out), str(status)], root / "forewarn.log")
    return wall, peak, rc, vmrss_mb(status)


# Each MEDS-Tab step as its console script runs it (import the step's ``main``, call it),
# recording the RSS after the imports first.
MEDSTAB_STEP = """
import sys
from pathlib import Path
from MEDS_tabular_automl.scripts.{module} import main
Path(sys.argv[1]).write_text(Path("/proc/self/status").read_text())  # RSS after imports, before data
sys.argv = sys.argv[2:]
sys.exit(main())
"""
MEDSTAB_MODULES = {
    "meds-tab-describe": "describe_codes",
    "meds-tab-tabularize-static": "tabularize_static",
    "meds-tab-tabularize-time-series": "tabularize_time_series",
    "meds-tab-cache-task": "cache_task",
}


# Three bugs of meds-tab 0.2.0 (with scipy >= 1.13) that make its matrices disagree with its own documented
# semantics (see benchmarks/medstab_notes.md). ``--medstab-variant patched`` runs MEDS-Tab
# with a copy of its package where these lines are fixed, to check the window semantics.
PATCHES = {
    "generate_summarized_reps.py": [
        # per-timestamp pre-aggregation drops the last event of every timestamp
        ('windows = group_df.select(pl.col("min_index", "max_index"))',
         'windows = group_df.select(pl.col("min_index"), pl.col("max_index") + 1)'),
        # scipy >= 1.13 returns 1-D coo_arrays from min/max(axis=0), whose .row is all zeros
        ("row.append(agg_matrix.row)",
         "row.append(np.full(len(agg_matrix.col), i, dtype=np.int32))"),
    ],
    "generate_ts_features.py": [
        # value rows are filtered on feature names ("X/value"), never codes: all value aggs empty
        ('.filter(pl.col("code").is_in(ts_columns))',
         '.filter(pl.col("code").is_in(list(column_to_int)))'),
    ],
}


def patched_overlay(venv: Path, dest: Path) -> Path:
    """A copy of MEDS_tabular_automl with PATCHES applied, for PYTHONPATH."""
    (src,) = venv.glob("lib/python3*/site-packages/MEDS_tabular_automl")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest / "MEDS_tabular_automl", ignore=shutil.ignore_patterns("__pycache__"))
    for name, edits in PATCHES.items():
        f = dest / "MEDS_tabular_automl" / name
        text = f.read_text()
        for old, new in edits:
            if text.count(old) != 1:
                raise RuntimeError(f"cannot patch {f}: {old!r} found {text.count(old)} times (another meds-tab version?)")
            text = text.replace(old, new)
        f.write_text(text)
    return dest


def run_medstab(
    root: Path, out: Path, venv: Path, timeout: float, overlay: Path | None = None
) -> tuple[float, float, int, dict, dict]:
    """The four MEDS-Tab steps in sequence; stops at the first failure or at ``timeout``.

    Returns (wall s, peak RSS MB of the largest step, exit code, wall per step, and per
    step ``{"peak_mb", "import_mb"}``)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log = root / ("medstab-patched.log" if overlay else "medstab.log")
    env = None if overlay is None else {**os.environ, "PYTHONPATH": str(overlay)}
    log.unlink(missing_ok=True)
    steps: dict[str, float] = {}
    start = time.perf_counter()
    # MEDS-Tab reads input_dir/<split>/<shard>.parquet: one folder per site, symlinked.
    data = out / "input" / "data"
    for shard in sorted((root / "events").glob("*.parquet")):
        site, _, name = shard.name.partition("-")
        (data / site).mkdir(parents=True, exist_ok=True)
        (data / site / name).symlink_to(shard.resolve())
    steps["layout"] = time.perf_counter() - start
    common = [f"input_dir={data}", f"output_dir={out / 'output'}", "do_overwrite=False"]
    tab = [
        "tabularization.min_code_inclusion_count=1",
        f"tabularization.window_sizes=[{','.join(WINDOWS)}]",
        f"tabularization.aggs=[static/present,{','.join(AGGS)}]",
    ]
    plan = [
        ("describe", ["meds-tab-describe", *common]),
        ("tabularize-static", ["meds-tab-tabularize-static", *common, *tab]),
        ("tabularize-time-series", ["meds-tab-tabularize-time-series", *common, *tab]),
        ("cache-task", ["meds-tab-cache-task", *common, *tab, "task_name=t2d", f"input_label_dir={root / 'labels'}"]),
    ]
    peak, rc = 0.0, 0
    memory: dict[str, dict[str, float]] = {}
    for name, cmd in plan:
        left = timeout - (time.perf_counter() - start)
        if left <= 0:
            rc = 124
            break
        status = root / f"medstab-{name}.import-status"
        status.unlink(missing_ok=True)
        code = MEDSTAB_STEP.format(module=MEDSTAB_MODULES[cmd[0]])
        wall, rss, rc = measured(
            [str(venv / "bin" / "python"), "-c", code, str(status), str(venv / "bin" / cmd[0]), *cmd[1:]], log, left, env
        )
        steps[name] = wall
        memory[name] = {"peak_mb": rss, "import_mb": vmrss_mb(status)}
        peak = max(peak, rss)
        if rc != 0:
            break
    return time.perf_counter() - start, peak, rc, steps, memory


# ----------------------------------------------------------------------------- comparison


def load_medstab(out: Path):
    """MEDS-Tab's task cache as one CSR matrix with Forewarn-style (code, agg, window) columns."""
    import numpy as np
    import pyarrow.parquet as pq
    import scipy.sparse as sp

    base = out / "output"
    features = sorted(pq.read_table(base / "metadata" / "codes.parquet").column("code").to_pylist())
    by_suffix = defaultdict(list)
    for f in features:
        for sfx in ("/static/present", "/static/first", "/code", "/value"):
            if f.endswith(sfx):
                by_suffix[sfx].append(f[: -len(sfx)])
                break
    columns: dict[tuple[str, str, str], int] = {}
    blocks, rows = [], []
    row_offset = 0
    for label_fp in sorted((base / "t2d" / "labels").glob("*/*.parquet")):
        split, shard = label_fp.parent.name, label_fp.stem
        lab = pq.read_table(label_fp, columns=["subject_id", "time"])
        n = lab.num_rows
        rows.append(lab)
        shard_dir = base / "t2d" / "task_cache" / split / shard
        for npz in sorted(shard_dir.glob("*/*/*.npz")):
            window, kind, agg = npz.parent.parent.name, npz.parent.name, npz.stem
            codes = by_suffix["/static/present"] if window == "none" else by_suffix["/" + kind]
            z = np.load(npz)
            data, r, c = z["array"]
            shape = tuple(z["shape"])
            if shape[0] != n:
                raise ValueError(f"{npz}: {shape[0]} rows, labels have {n}")
            key_agg = f"{kind}/{agg}"
            key_win = "static" if window == "none" else window
            col_ids = np.array([columns.setdefault((code, key_agg, key_win), len(columns)) for code in codes], np.int64)
            blocks.append((r.astype(np.int64) + row_offset, col_ids[c.astype(np.int64)], data.astype(np.float64)))
        row_offset += n
    import pyarrow as pa

    labels = pa.concat_tables(rows).to_pandas()
    if blocks:
        r = np.concatenate([b[0] for b in blocks])
        c = np.concatenate([b[1] for b in blocks])
        v = np.concatenate([b[2] for b in blocks])
    else:
        r = c = np.zeros(0, np.int64)
        v = np.zeros(0)
    X = sp.csr_matrix((v, (r, c)), shape=(row_offset, len(columns)))
    return X, labels, columns


def compare(fw_out: Path, mt_out: Path) -> dict:
    """Values of the shared columns at the shared rows."""
    import numpy as np
    import pandas as pd

    from forewarn.features.featurize import FeatureMatrix

    fx, frows, fcols = FeatureMatrix(fw_out).load()
    mx, mrows, mcols = load_medstab(mt_out)
    fkeys = {(c, a, w): i for i, (c, a, w) in enumerate(zip(fcols["code"], fcols["agg"], fcols["window"], strict=False))}
    shared = sorted(set(fkeys) & set(mcols))
    fr = pd.Series(range(len(frows)), index=pd.MultiIndex.from_arrays(
        [frows["subject_id"].to_numpy(), frows["prediction_time"].to_numpy("datetime64[us]")]))
    mr = pd.Series(range(len(mrows)), index=pd.MultiIndex.from_arrays(
        [mrows["subject_id"].to_numpy(), mrows["time"].to_numpy("datetime64[us]")]))
    common_rows = fr.index.intersection(mr.index)
    a = fx[fr.loc[common_rows].to_numpy()][:, [fkeys[k] for k in shared]].tocsc().astype(np.float64)
    b = mx[mr.loc[common_rows].to_numpy()][:, [mcols[k] for k in shared]].tocsc()
    per = defaultdict(lambda: [0, 0, 0.0, 0, 0])  # cells, mismatches, max abs diff, stored only in forewarn, only in medstab
    for j, (_code, agg, window) in enumerate(shared):
        av = a[:, [j]].toarray().ravel()
        bv = b[:, [j]].toarray().ravel()
        a_stored = np.zeros(av.size, bool)
        a_stored[a.indices[a.indptr[j]:a.indptr[j + 1]]] = True
        b_stored = np.zeros(bv.size, bool)
        b_stored[b.indices[b.indptr[j]:b.indptr[j + 1]]] = True
        diff = np.abs(av - bv)
        bad = diff > ATOL + RTOL * np.maximum(np.abs(av), np.abs(bv))
        s = per[(agg, window)]
        s[0] += av.size
        s[1] += int(bad.sum())
        s[2] = max(s[2], float(diff.max(initial=0.0)))
        s[3] += int((a_stored & ~b_stored).sum())
        s[4] += int((b_stored & ~a_stored).sum())
    total = [sum(v[0] for v in per.values()), sum(v[1] for v in per.values()), max((v[2] for v in per.values()), default=0.0)]
    f_only = sorted({(a_, w) for (_, a_, w) in set(fkeys) - set(mcols)} )
    return {
        "rows": {"forewarn": len(frows), "medstab": len(mrows), "shared": len(common_rows)},
        "columns": {"forewarn": len(fkeys), "medstab": len(mcols), "shared": len(shared),
                    "forewarn_only": len(set(fkeys) - set(mcols)), "medstab_only": len(set(mcols) - set(fkeys))},
        "forewarn_only_kinds": [f"{x}@{y}" for x, y in f_only],
        "cells": total[0], "mismatches": total[1], "max_abs_diff": total[2],
        "per": {f"{k[0]}@{k[1]}": v for k, v in sorted(per.items())},
    }


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="200,500,1000", help="people in the network, both tools (comma list)")
    parser.add_argument("--forewarn-only-sizes", default="", help="people, Forewarn alone (e.g. 100000,1000000)")
    parser.add_argument("--medstab-venv", type=Path, default=Path(os.environ.get("MEDSTAB_VENV", "/tmp/medstab-venv")))
    parser.add_argument("--skip-medstab", action="store_true", help="run Forewarn alone at every size")
    parser.add_argument("--medstab-timeout", type=float, default=1800, help="seconds per size before MEDS-Tab is stopped")
    parser.add_argument("--medstab-variant", choices=["stock", "patched", "both"], default="stock",
                        help="stock meds-tab, a copy with three of its bugs fixed (parity check), or both")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/featurize-vs-medstab"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    if not args.skip_medstab and not (args.medstab_venv / "bin" / "meds-tab-tabularize-time-series").is_file():
        print(
            f"MEDS-Tab is not installed in {args.medstab_venv}: run `bash benchmarks/medstab_env.sh "
            f"{args.medstab_venv}` first (or pass --medstab-venv, or --skip-medstab).",
            file=sys.stderr,
        )
        return 2
    sizes = [(int(s), not args.skip_medstab) for s in args.sizes.split(",") if s]
    sizes += [(int(s), False) for s in args.forewarn_only_sizes.split(",") if s]
    results = []
    medstab_too_slow = False
    for people, with_medstab in sizes:
        root = args.workdir / f"people-{people}"
        print(f"[{time.strftime('%H:%M:%S')}] size {people}: preparing data", file=sys.stderr, flush=True)
        info = prepare(people, root)
        print(f"[{time.strftime('%H:%M:%S')}] size {people}: {info}; forewarn", file=sys.stderr, flush=True)
        fw = run_forewarn(root, root / "forewarn-out")
        row = {**info, "forewarn": {"wall_s": fw[0], "peak_mb": fw[1], "rc": fw[2], "import_mb": fw[3],
                                    "load_avg": os.getloadavg()}}
        if fw[2] != 0:
            print(f"forewarn failed at {people}; see {root / 'forewarn.log'}", file=sys.stderr)
        variants = {"stock": ["stock"], "patched": ["patched"], "both": ["stock", "patched"]}[args.medstab_variant]
        for variant in variants if with_medstab and not medstab_too_slow else []:
            print(f"[{time.strftime('%H:%M:%S')}] size {people}: forewarn {fw[0]:.1f} s; meds-tab {variant}", file=sys.stderr, flush=True)
            overlay = patched_overlay(args.medstab_venv, args.workdir / "medstab-patched") if variant == "patched" else None
            mt = run_medstab(root, root / "medstab-out", args.medstab_venv, args.medstab_timeout, overlay)
            key = "medstab" if variant == "stock" else "medstab_patched"
            peak_step = max(mt[4], key=lambda k: mt[4][k]["peak_mb"]) if mt[4] else None
            row[key] = {"wall_s": mt[0], "peak_mb": mt[1], "rc": mt[2], "steps": mt[3], "memory": mt[4],
                        "import_mb": mt[4][peak_step]["import_mb"] if peak_step else float("nan"),
                        "peak_step": peak_step, "load_avg": os.getloadavg()}
            if mt[2] == 0 and fw[2] == 0:
                row[key]["parity"] = compare(root / "forewarn-out", root / "medstab-out")
            elif mt[2] != 0:
                medstab_too_slow = mt[2] in (124, 137, -9)
                print(f"meds-tab stopped (rc {mt[2]}) at {people}; see {root}/medstab*.log", file=sys.stderr)
            if not os.environ.get("FVM_KEEP"):
                shutil.rmtree(root / "medstab-out", ignore_errors=True)
        results.append(row)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))

    print("| people | subjects | events | labels | tool | wall s | peak RSS MB | post-import RSS MB | peak - post-import MB "
          "| speed ratio (MEDS-Tab/Forewarn) | memory ratio (Forewarn/MEDS-Tab) | same, above post-import | parity |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        fw = r["forewarn"]
        lead = f"| {r['people']:,} | {r['subjects']:,} | {r['events']:,} | {r['labels']:,}"
        fw_status = "" if fw["rc"] == 0 else f" (rc {fw['rc']})"
        fw_base = fw.get("import_mb", float("nan"))
        print(f"{lead} | Forewarn{fw_status} | {fw['wall_s']:.1f} | {fw['peak_mb']:,.0f} | {fw_base:,.0f} "
              f"| {fw['peak_mb'] - fw_base:,.0f} | | | | |")
        for key, name in (("medstab", "MEDS-Tab"), ("medstab_patched", "MEDS-Tab, 3 bugs patched")):
            mt = r.get(key)
            if not mt:
                continue
            par = mt.get("parity")
            speed = mem = mem_data = ""
            mt_base = mt.get("import_mb", float("nan"))
            if mt["rc"] == 0:
                speed = f"{mt['wall_s'] / fw['wall_s']:.0f}x"
                mem = f"{fw['peak_mb'] / mt['peak_mb']:.2f}"
                mem_data = f"{(fw['peak_mb'] - fw_base) / (mt['peak_mb'] - mt_base):.2f}"
            status = "" if mt["rc"] == 0 else f" (stopped, rc {mt['rc']})"
            p = ""
            if par:
                p = (f"{par['mismatches']:,} of {par['cells']:,} shared cells differ (max abs diff "
                     f"{par['max_abs_diff']:.3g}); {par['columns']['shared']:,} shared cols, "
                     f"{par['rows']['shared']:,} rows")
            steps = ", ".join(f"{k} {v:.1f}" for k, v in mt["steps"].items())
            print(f"{lead} | {name}{status} [{steps}; peak in {mt.get('peak_step')}] | {mt['wall_s']:.1f} "
                  f"| {mt['peak_mb']:,.0f} | {mt_base:,.0f} | {mt['peak_mb'] - mt_base:,.0f} | {speed} | {mem} "
                  f"| {mem_data} | {p} |")
    for key in ("medstab", "medstab_patched"):
        compared = [r for r in results if r.get(key, {}).get("parity")]
        if not compared:
            continue
        r = compared[0]  # the smallest size: the per-column breakdown is the same story at every size
        par = r[key]["parity"]
        print(f"\nParity by (agg, window), {key}, at {r['people']:,} people: columns {par['columns']}, rows {par['rows']}")
        print(f"Forewarn-only column kinds: {par['forewarn_only_kinds']}")
        print("\n| agg @ window | cells | mismatching | max abs diff | stored only in Forewarn | stored only in MEDS-Tab |")
        print("|---|---:|---:|---:|---:|---:|")
        for k, (cells, bad, mad, fo, mo) in par["per"].items():
            print(f"| {k} | {cells:,} | {bad:,} | {mad:.4g} | {fo:,} | {mo:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
