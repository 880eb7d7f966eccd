"""Parity with MEDS-Tab on a golden case small enough to check by eye (issue 4).

Forewarn's windows end at the prediction time t: an event at e is in window w when
t - w < e <= t. MEDS-Tab anchors each window at the subject's last event time t' <= t
instead: (t' - w, t']. When t is an event time (ACES triggers on events) the two are
the same window, and Forewarn's values must equal MEDS-Tab's for the shared
aggregations and windows; where t is not an event time they differ, as pinned below.

Where the MEDS-Tab literals come from
-------------------------------------
``MEDSTAB`` holds every cell MEDS-Tab stored at the five label rows, produced by

    bash benchmarks/medstab_env.sh                       # meds-tab 0.2.0 in /tmp/medstab-venv
    /tmp/fw-venv/bin/python tests/test_medstab_golden.py  # the __main__ block at the end

i.e. ``meds-tab-describe``, ``-tabularize-static``, ``-tabularize-time-series`` and
``-cache-task`` (as in benchmarks/featurize_vs_medstab.py, min_code_inclusion_count=1,
windows 1d/30d/365d/full, aggs static/present, static/first, code/count, value/count,
value/sum, value/sum_sqd, value/min, value/max) on ``EVENTS`` and ``LABELS``; meds-tab
0.2.0, MEDS_transforms 0.7.0, polars 1.44.2, scipy 1.17.1. MEDS-Tab ran from a copy of
its package with four bugs fixed: B1-B3 of benchmarks/medstab_notes.md (``PATCHES`` in
featurize_vs_medstab.py: the last event of every timestamp dropped, every value
aggregation empty, min/max written to row 0) and B4 (``B4_PATCH`` below): cache-task
matches labels to event rows with a ``join_asof`` whose left side comes out of an
inner join in no fixed order, and polars' by-group asof join gives wrong rows when a
subject's labels are not in time order. In 2 of 4 runs without that fix a label got a
later event's row: (1, 2021-02-28 17:00) got T's row (7 h later) in one,
(2, 2020-07-01 12:00) got the row of 2020-12-01 10:00 (5 months later) in another.
Stock MEDS-Tab (B1-B4 present) stores no value/* cell at all and drops every
single-event timestamp from code/count (Visit//OP and Visit//ER counts are all missing).
Every subject has a static code with a value: MEDS-Tab's tabularize-static fails
(IndexError in get_sparse_static_rep) when a subject with timed events has none (B5).

Names: MEDS-Tab writes ``<window>/<code|value>/<agg>.npz`` whose columns are the sorted
features ``<code>/code`` or ``<code>/value``, and ``none/static/<present|first>.npz``
with features ``<code>/static/<present|first>``. Forewarn's ``code/agg/window`` name is
the same string reordered: (30d, value/sum.npz, ``LAB//A/value``) is
``LAB//A/value/sum/30d``; (none, static/first.npz, ``STATIC//HEIGHT/static/first``) is
``STATIC//HEIGHT/static/first/static``. MEDS-Tab-only: ``MEDS_BIRTH/code/count/*``
(Forewarn uses birth for ``AGE`` only); Forewarn-only: ``AGE/years/at_prediction/t``.
A cell not stored is missing in both (MEDS-Tab also drops stored zeros).

Where the two definitions differ even at event times (MEDS-Tab first aggregates each
(subject, timestamp) over its event rows, then aggregates those per-timestamp rows over
the window; ``DIFFERENT`` lists every such cell and the test checks there are no others):

- code/count and value/count count timestamps, not events (subject 2's two LAB//A
  values at 2020-12-01 10:00 count once);
- value/sum_sqd squares twice: sum over timestamps of (sum of v^2 at the timestamp)^2;
- value/min and value/max include implicit zeros: rows of the window (or of the
  timestamp) without the code count as 0, so a positive min and a negative max become 0
  (not stored); a positive min survives only where every event row of every timestamp
  in the window has the code (L5's 1d and 30d: one timestamp holding two LAB//A values
  and nothing else), a negative min survives (L4, L5);
- static/first is the mean of the subject's values of the code, not the first.
value/sum and value/max of positive values, code/count with one event per timestamp
and static/present agree exactly, as do every count and sum at the window boundaries.

Precision: every value, sum and square here is a multiple of 1/16 far below 2^24,
exact in float32 (MEDS-Tab sums in float32, Forewarn in float64 and stores float32), so
the comparison is exact (``==``), not within a float32 tolerance; only the Forewarn-only
AGE is compared approximately.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from helpers import REPO, label_table, write_events

from forewarn.features.featurize import FeatureConfig, featurize

US = timedelta(microseconds=1)
T = datetime(2021, 3, 1)  # subject 1's main prediction time, an event time
LAB, OP, ER, HEIGHT = "LAB//A", "Visit//OP", "Visit//ER", "STATIC//HEIGHT"

EVENTS = [  # (subject_id, time, code, numeric_value), sorted by (subject, time), static first
    (1, None, "Gender//F", None),  # static, no value
    (1, None, HEIGHT, 170.0),  # static with a value
    (1, datetime(1980, 1, 1), "MEDS_BIRTH", None),
    (1, datetime(2019, 6, 1, 8), LAB, 4.0),  # a: only in "full" (> 365d before every label)
    (1, datetime(2019, 6, 1, 8), OP, None),
    (1, T - timedelta(days=30), LAB, 9.0),  # b: exactly t - 30d: outside 30d of T, inside 365d
    (1, T - timedelta(days=30) + US, LAB, 2.0),  # c: t - 30d + 1 µs: inside 30d of T
    (1, datetime(2021, 2, 28, 9), LAB, 3.0),  # d: same day as e, 15 h before T
    (1, datetime(2021, 2, 28, 9), OP, None),
    (1, datetime(2021, 2, 28, 17), LAB, 5.0),  # e: a label time
    (1, T, LAB, 6.0),  # f: exactly t
    (1, T, OP, None),
    (1, T + timedelta(days=5), LAB, 100.0),  # g: after every label: never seen
    (2, None, "Gender//M", None),
    (2, None, HEIGHT, 180.0),  # two static values: Forewarn takes the first,
    (2, None, HEIGHT, 184.0),  # MEDS-Tab the mean (182)
    (2, datetime(1990, 5, 5), "MEDS_BIRTH", None),
    (2, datetime(2020, 7, 1, 10), LAB, -1.5),  # p: negative
    (2, datetime(2020, 7, 1, 12), ER, None),  # a label time
    (2, datetime(2020, 12, 1, 10), LAB, 2.5),  # q and r: two values at one timestamp
    (2, datetime(2020, 12, 1, 10), LAB, 0.5),
]
L1, L2, L3 = (1, datetime(2021, 2, 28, 17)), (1, T), (1, T + timedelta(days=2))
L4, L5 = (2, datetime(2020, 7, 1, 12)), (2, datetime(2020, 12, 1, 10))
LABELS = [(*L1, True), (*L2, True), (*L3, False), (*L4, False), (*L5, True)]
EVENT_TIME_LABELS = [L1, L2, L4, L5]  # L3 = T + 2 days is not an event time of subject 1
WINDOWS = ["1d", "30d", "365d", "full"]
AGGS = [
    "code/count", "value/count", "value/sum", "value/sum_sqd", "value/min", "value/max",
    "static/present", "static/first",
]
CONFIG = FeatureConfig(windows=WINDOWS, aggs=AGGS, min_code_subjects=1, rollup_icd10=False, parent_codes=False, n_workers=1)


def _lab(window, count, total, sum_sqd, lo, hi):
    return {
        f"{LAB}/value/count/{window}": count, f"{LAB}/value/sum/{window}": total,
        f"{LAB}/value/sum_sqd/{window}": sum_sqd, f"{LAB}/value/min/{window}": lo, f"{LAB}/value/max/{window}": hi,
    }


def _counts(code, **by_window):
    return {f"{code}/code/count/{w}": n for w, n in by_window.items()}


def _static(sex, height):
    return {f"Gender//{sex}/static/present/static": 1.0, f"{HEIGHT}/static/present/static": 1.0,
            f"{HEIGHT}/static/first/static": height}


# MEDS-Tab 0.2.0 (B1-B4 fixed), every stored cell at each label row; missing = not stored.
# How each follows from EVENTS (per-timestamp values first, then the window's timestamps):
# L1 = (1, 2021-02-28 17:00), the time of e.
#   1d  (02-27 17:00, 02-28 17:00]: d, e          count 2, sum 8,  sum_sqd 3^4+5^4 = 706
#   30d (01-29 17:00, ...]: b, c, d, e            count 4, sum 19, sum_sqd 9^4+2^4+3^4+5^4 = 7283, max 9
#   365d: the same four; full: + a                count 5, sum 23, sum_sqd 7283+4^4 = 7539
#   Visit//OP 1 (d's timestamp) in 1d/30d/365d, 2 in full; min: 0 (not stored) everywhere,
#   since d's timestamp also holds Visit//OP (an implicit 0 for LAB//A at that timestamp)
#   and the full window holds the birth timestamp.
# L2 = (1, T): 1d (02-28 00:00, T]: d, e, f (count 3, sum 14, 3^4+5^4+6^4 = 2002, max 6);
#   30d (01-30 00:00, T]: b at exactly T - 30d is out, c at + 1 µs is in: c, d, e, f
#   (4, 16, 2018, max 6); 365d: b..f (5, 25, 8579, max 9); full: a..f (6, 29, 8835, max 9).
#   Visit//OP 2, 2, 2, 3. min never stored (f's timestamp holds Visit//OP too).
# L4 = (2, 2020-07-01 12:00), the time of Visit//ER: p only (count 1, sum -1.5,
#   sum_sqd 2.25^2 = 5.0625, min -1.5 = min(-1.5, 0 at the Visit//ER timestamp); max
#   max(-1.5, 0) = 0: not stored); Visit//ER 1 in every window.
# L5 = (2, 2020-12-01 10:00), the time of q and r: one timestamp in 1d/30d (count 1,
#   sum 3, sum_sqd (2.5^2+0.5^2)^2 = 42.25, min 0.5, max 2.5: both rows of the timestamp
#   hold LAB//A, so no implicit 0); 365d/full add p and the Visit//ER timestamp (count 2,
#   sum 1.5, sum_sqd 42.25+5.0625 = 47.3125, min -1.5, max 2.5); Visit//ER 1 in 365d/full.
MEDSTAB = {
    L1: {
        **_static("F", 170.0), **_counts(LAB, **{"1d": 2, "30d": 4, "365d": 4, "full": 5}),
        **_counts(OP, **{"1d": 1, "30d": 1, "365d": 1, "full": 2}), "MEDS_BIRTH/code/count/full": 1.0,
        **_lab("1d", 2, 8.0, 706.0, None, 5.0), **_lab("30d", 4, 19.0, 7283.0, None, 9.0),
        **_lab("365d", 4, 19.0, 7283.0, None, 9.0), **_lab("full", 5, 23.0, 7539.0, None, 9.0),
    },
    L2: {
        **_static("F", 170.0), **_counts(LAB, **{"1d": 3, "30d": 4, "365d": 5, "full": 6}),
        **_counts(OP, **{"1d": 2, "30d": 2, "365d": 2, "full": 3}), "MEDS_BIRTH/code/count/full": 1.0,
        **_lab("1d", 3, 14.0, 2002.0, None, 6.0), **_lab("30d", 4, 16.0, 2018.0, None, 6.0),
        **_lab("365d", 5, 25.0, 8579.0, None, 9.0), **_lab("full", 6, 29.0, 8835.0, None, 9.0),
    },
    L4: {
        **_static("M", 182.0), **_counts(LAB, **{"1d": 1, "30d": 1, "365d": 1, "full": 1}),
        **_counts(ER, **{"1d": 1, "30d": 1, "365d": 1, "full": 1}), "MEDS_BIRTH/code/count/full": 1.0,
        **{k: v for w in WINDOWS for k, v in _lab(w, 1, -1.5, 5.0625, -1.5, None).items()},
    },
    L5: {
        **_static("M", 182.0), **_counts(LAB, **{"1d": 1, "30d": 1, "365d": 2, "full": 2}),
        **_counts(ER, **{"365d": 1, "full": 1}), "MEDS_BIRTH/code/count/full": 1.0,
        **_lab("1d", 1, 3.0, 42.25, 0.5, 2.5), **_lab("30d", 1, 3.0, 42.25, 0.5, 2.5),
        **_lab("365d", 2, 1.5, 47.3125, -1.5, 2.5), **_lab("full", 2, 1.5, 47.3125, -1.5, 2.5),
    },
}
# L3 = (1, T + 2 days) is not an event time: MEDS-Tab's join_asof matched it to subject 1's
# last event time <= L3, which is T (event row 6), and it got exactly L2's row.
MEDSTAB[L3] = MEDSTAB[L2]
MEDSTAB = {label: {k: v for k, v in cells.items() if v is not None} for label, cells in MEDSTAB.items()}

# Forewarn's value wherever it differs from MEDS-Tab's at an event-time label (None: not
# stored by Forewarn), by MEDS-Tab definition (module docstring). Every other shared cell is equal.
DIFFERENT = {
    # value/sum_sqd: Forewarn sums v^2 over events.
    **{(L1, f"{LAB}/value/sum_sqd/{w}"): v for w, v in {"1d": 34.0, "30d": 119.0, "365d": 119.0, "full": 135.0}.items()},
    **{(L2, f"{LAB}/value/sum_sqd/{w}"): v for w, v in {"1d": 70.0, "30d": 74.0, "365d": 155.0, "full": 171.0}.items()},
    **{(L4, f"{LAB}/value/sum_sqd/{w}"): 2.25 for w in WINDOWS},
    **{(L5, f"{LAB}/value/sum_sqd/{w}"): v for w, v in {"1d": 6.5, "30d": 6.5, "365d": 8.75, "full": 8.75}.items()},
    # value/min of positive values (MEDS-Tab: 0, not stored): the smallest value in the window.
    **{(L1, f"{LAB}/value/min/{w}"): v for w, v in {"1d": 3.0, "30d": 2.0, "365d": 2.0, "full": 2.0}.items()},
    **{(L2, f"{LAB}/value/min/{w}"): v for w, v in {"1d": 3.0, "30d": 2.0, "365d": 2.0, "full": 2.0}.items()},
    # value/max of a negative value (MEDS-Tab: 0, not stored).
    **{(L4, f"{LAB}/value/max/{w}"): -1.5 for w in WINDOWS},
    # two events at one timestamp count twice in Forewarn.
    **{
        (L5, f"{LAB}/{kind}/count/{w}"): n
        for kind in ("code", "value")
        for w, n in {"1d": 2.0, "30d": 2.0, "365d": 3.0, "full": 3.0}.items()
    },
    # static/first: the first static value (180), not the mean (182).
    (L4, f"{HEIGHT}/static/first/static"): 180.0,
    (L5, f"{HEIGHT}/static/first/static"): 180.0,
}

# Forewarn at L3 = 2021-03-03 (not an event time): windows end at L3, so
#   1d (03-02, 03-03] holds no event: no LAB//A or Visit//OP cell (MEDS-Tab: 3 LAB//A, 2 Visit//OP, at T);
#   30d (2021-02-01, 03-03]: d, e, f (count 3, sum 14) — MEDS-Tab's 30d ends at T and also holds c (4, 16);
#   365d and full hold the same events as MEDS-Tab's (t' = T and L3 differ by 2 days, no event between).
FOREWARN_L3 = {
    **_static("F", 170.0), "AGE/years/at_prediction/t": (L3[1] - datetime(1980, 1, 1)) / timedelta(days=365.25),
    **_counts(LAB, **{"30d": 3, "365d": 5, "full": 6}), **_counts(OP, **{"30d": 2, "365d": 2, "full": 3}),
    **_lab("30d", 3, 14.0, 70.0, 3.0, 6.0), **_lab("365d", 5, 25.0, 155.0, 2.0, 9.0),
    **_lab("full", 6, 29.0, 171.0, 2.0, 9.0),
}
BIRTH = {1: datetime(1980, 1, 1), 2: datetime(1990, 5, 5)}


def _age(label) -> float:
    """Forewarn-only AGE: years of 365.25 days from MEDS_BIRTH to the prediction time."""
    return (label[1] - BIRTH[label[0]]) / timedelta(days=365.25)


def write_dataset(root: Path) -> None:
    """EVENTS as one MEDS shard ``events/golden-0.parquet`` and LABELS as ``labels/labels.parquet``."""
    import pyarrow.parquet as pq

    write_events(root / "events", EVENTS, shard="golden-0")
    (root / "labels").mkdir(parents=True, exist_ok=True)
    pq.write_table(label_table(LABELS), root / "labels" / "labels.parquet")


@pytest.fixture(scope="module")
def forewarn(tmp_path_factory) -> dict[tuple, dict[str, float]]:
    """Forewarn's stored cells, by label: {(subject, prediction_time): {name: value}}."""
    root = tmp_path_factory.mktemp("golden")
    write_dataset(root)
    splits = pd.DataFrame({"subject_id": [1, 2], "split": "train"})
    X, rows, cols = featurize(root / "events", label_table(LABELS), splits, root / "out", CONFIG).load()
    X = X.tocoo()
    keys = [(int(s), t.to_pydatetime()) for s, t in zip(rows["subject_id"], rows["prediction_time"], strict=True)]
    out: dict[tuple, dict[str, float]] = {key: {} for key in keys}
    for i, j, v in zip(X.row, X.col, X.data, strict=True):
        out[keys[i]][cols["name"][j]] = float(v)
    return out


def test_event_time_labels_equal_medstab_on_shared_cells(forewarn):
    for label in EVENT_TIME_LABELS:
        got = dict(forewarn[label])
        assert got.pop("AGE/years/at_prediction/t") == pytest.approx(_age(label))
        expected = {k: v for k, v in MEDSTAB[label].items() if not k.startswith("MEDS_BIRTH/")}
        for (lab, name), value in DIFFERENT.items():
            if lab == label:
                assert expected.get(name) != value, (label, name)  # a listed difference is a real one
                expected.pop(name, None)
                if value is not None:
                    expected[name] = value
        assert got == expected, label


def test_non_event_time_label_windows_end_at_the_prediction_time(forewarn):
    assert forewarn[L3] == pytest.approx(FOREWARN_L3)
    # MEDS-Tab's row for L3 is its row for T (L2): anchored at the last event <= L3.
    assert MEDSTAB[L3][f"{LAB}/code/count/1d"] == 3 and f"{LAB}/code/count/1d" not in forewarn[L3]
    assert MEDSTAB[L3][f"{LAB}/value/sum/30d"] == 16 and forewarn[L3][f"{LAB}/value/sum/30d"] == 14


# --------------------------------------------------------------------------- regeneration

# B4: sort the labels by (subject, time) before cache-task's join_asof (see the docstring).
B4_PATCH = (
    "scripts/cache_task.py",
    ').join_asof(other=meds_data_df, by="subject_id", on="time")',
    ').sort("subject_id", "time").join_asof(other=meds_data_df, by="subject_id", on="time")',
)


def _regenerate() -> int:  # pragma: no cover - needs MEDS-Tab in its own venv
    """Run MEDS-Tab on EVENTS/LABELS and print its cells per label (the MEDSTAB literals)."""
    import argparse
    import importlib.util
    import shutil
    import subprocess

    import numpy as np
    import pyarrow.parquet as pq

    parser = argparse.ArgumentParser(description=_regenerate.__doc__)
    parser.add_argument("--medstab-venv", type=Path, default=Path("/tmp/medstab-venv"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medstab-golden"))
    parser.add_argument("--variant", choices=["stock", "patched"], default="patched", help="patched: B1-B4 fixed")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("featurize_vs_medstab", REPO / "benchmarks" / "featurize_vs_medstab.py")
    fvm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fvm)
    fvm.WINDOWS = WINDOWS
    fvm.AGGS = [a for a in AGGS if a != "static/present"]  # run_medstab adds static/present itself
    root = args.workdir
    shutil.rmtree(root, ignore_errors=True)
    write_dataset(root)
    overlay = None
    if args.variant == "patched":
        overlay = fvm.patched_overlay(args.medstab_venv, root / "overlay")
        path, old, new = B4_PATCH
        f = overlay / "MEDS_tabular_automl" / path
        text = f.read_text()
        assert text.count(old) == 1, f"cannot apply B4 to {f}"
        f.write_text(text.replace(old, new))
    _, _, rc, _ = fvm.run_medstab(root, root / "medstab-out", args.medstab_venv, 600, overlay)
    if rc:
        print(f"meds-tab failed (rc {rc}); see {root}/medstab*.log")
        return rc
    version = subprocess.run(
        [str(args.medstab_venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('meds-tab'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    base = root / "medstab-out" / "output"
    features = sorted(pq.read_table(base / "metadata" / "codes.parquet").column("code").to_pylist())
    cells: dict[tuple, dict[str, float]] = {}
    for lab_fp in sorted((base / "t2d" / "labels").glob("*/*.parquet")):
        labels = pq.read_table(lab_fp).to_pandas()
        columns = (labels["subject_id"], labels["time"], labels["event_id"])
        keys = [(int(s), t.to_pydatetime(), int(e)) for s, t, e in zip(*columns, strict=True)]
        for key in keys:
            cells.setdefault(key, {})
        for npz in sorted((base / "t2d" / "task_cache" / lab_fp.parent.name / lab_fp.stem).glob("*/*/*.npz")):
            window, kind, agg = npz.parent.parent.name, npz.parent.name, npz.stem
            suffix = f"/{kind}/{agg}" if window == "none" else f"/{kind}"
            names = [f[: -len(suffix)] for f in features if f.endswith(suffix)]
            data, row, col = np.load(npz)["array"]
            for v, i, j in zip(data, row.astype(int), col.astype(int), strict=True):
                cells[keys[i]][f"{names[j]}/{kind}/{agg}/{'static' if window == 'none' else window}"] = float(v)
    print(f"meds-tab {version} ({args.variant}), {len(cells)} label rows")
    for (subject, time, event_id), row in sorted(cells.items()):
        print(f"\n({subject}, {time!r}): event_id {event_id}")
        for name, value in sorted(row.items()):
            print(f"    {name!r}: {value!r},")
    return 0


if __name__ == "__main__":
    raise SystemExit(_regenerate())
