"""Windowed features at prediction times, as a sparse matrix.

Window semantics: an event at time ``e`` is in window ``w`` of prediction time ``t``
when ``t - w < e <= t``; the ``full`` window holds every event with ``e <= t``.
Static events (null time) are features at every prediction time of their subject.

Columns are named ``code/agg/window`` (MEDS-Tab style), for example
``LOINC//4548-4/value/last/365d``; ``columns.parquet`` also carries the parts and a
readable name. Unstored matrix entries mean "no such event in the window": XGBoost
treats them as missing, not as zero.

The algorithm is incremental, never a join: events are sorted by (subject, code,
time); for each prediction time and each of its subject's codes the window bounds are
two binary searches, counts and sums are prefix-sum differences, and min/max are
range reductions. Work and memory grow with the events and labels of one shard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from forewarn.features.labels import DAY_US, YEAR_DAYS
from forewarn.records import schema
from forewarn.records.progress import stage

CODE_AGGS = ("code/count",)
VALUE_AGGS = ("value/count", "value/sum", "value/sum_sqd", "value/min", "value/max", "value/mean", "value/last")
AGG_NAMES = {
    "code/count": "count",
    "value/count": "number of values",
    "value/sum": "sum",
    "value/sum_sqd": "sum of squares",
    "value/min": "minimum",
    "value/max": "maximum",
    "value/mean": "mean value",
    "value/last": "last value",
    "static/present": "present",
    "years/at_prediction": "at prediction time",
}


class FeatureConfig(BaseModel):
    """Which windows and aggregations, and how the code vocabulary is chosen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    windows: list[str] = Field(default=["30d", "365d", "full"], min_length=1)
    aggs: list[str] = Field(default=["code/count", "value/mean", "value/min", "value/max", "value/last"], min_length=1)
    min_code_subjects: int = Field(10, ge=1, description="a code enters the vocabulary when this many train subjects have it")

    @field_validator("windows")
    @classmethod
    def _windows(cls, value: list[str]) -> list[str]:
        for w in value:
            if w != "full" and not (w.endswith("d") and w[:-1].isdigit() and int(w[:-1]) > 0):
                raise ValueError(f"windows must be '<N>d' (N > 0 days) or 'full'; got {w!r}.")
        return value

    @field_validator("aggs")
    @classmethod
    def _aggs(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in CODE_AGGS + VALUE_AGGS]
        if bad:
            raise ValueError(f"aggs must be among {list(CODE_AGGS + VALUE_AGGS)}; got {bad}.")
        return value


def window_us(window: str) -> int | None:
    return None if window == "full" else int(window[:-1]) * DAY_US


@dataclass(frozen=True)
class FeatureMatrix:
    """Paths of a featurized dataset: ``X.npz`` (CSR), ``rows.parquet``, ``columns.parquet``."""

    dir: Path

    @property
    def x_path(self) -> Path:
        return self.dir / "X.npz"

    @property
    def rows_path(self) -> Path:
        return self.dir / "rows.parquet"

    @property
    def columns_path(self) -> Path:
        return self.dir / "columns.parquet"

    def load(self) -> tuple[sp.csr_matrix, pd.DataFrame, pd.DataFrame]:
        return sp.load_npz(self.x_path).tocsr(), pd.read_parquet(self.rows_path), pd.read_parquet(self.columns_path)


def choose_vocabulary(events_dir: Path, train_subjects: np.ndarray, min_subjects: int) -> tuple[list[str], set[str]]:
    """Codes seen in at least ``min_subjects`` train subjects, and which of them carry values.

    Only the train split decides the vocabulary, so held-out data never shapes the
    columns.
    """
    con = duckdb.connect()
    con.register("train_ids", pa.table({"subject_id": pa.array(train_subjects, pa.int64())}))
    rows = con.execute(
        f"""
        SELECT code, count(DISTINCT subject_id) AS n, bool_or(numeric_value IS NOT NULL AND NOT isnan(numeric_value)) AS numeric
        FROM read_parquet('{Path(events_dir) / "*.parquet"}') e SEMI JOIN train_ids USING (subject_id)
        WHERE code <> '{schema.BIRTH_CODE}'
        GROUP BY code HAVING count(DISTINCT subject_id) >= {int(min_subjects)} ORDER BY code
        """
    ).fetchall()
    con.close()
    return [r[0] for r in rows], {r[0] for r in rows if r[2]}


def column_table(codes: list[str], numeric: set[str], static: set[str], config: FeatureConfig) -> pd.DataFrame:
    """The ordered column list: age and static codes first, then code by code."""
    cols = [("AGE", "years/at_prediction", "t")]
    for code in codes:
        if code in static:
            cols.append((code, "static/present", "static"))
            continue
        for window in config.windows:
            for agg in config.aggs:
                if agg in CODE_AGGS or code in numeric:
                    cols.append((code, agg, window))
    frame = pd.DataFrame(cols, columns=["code", "agg", "window"])
    frame.insert(0, "name", frame["code"] + "/" + frame["agg"] + "/" + frame["window"])
    return frame


def featurize(
    events_dir: Path,
    labels: pa.Table,
    splits: pd.DataFrame,
    out_dir: Path,
    config: FeatureConfig,
    codes_path: Path | None = None,
) -> FeatureMatrix:
    """Compute the feature matrix for ``labels`` from ``events_dir`` into ``out_dir``."""
    events_dir, out_dir = Path(events_dir), Path(out_dir)
    with stage("featurize") as counts:
        labels_df = labels.to_pandas()
        labels_df = labels_df.merge(splits, on=schema.SUBJECT_ID, how="left", validate="many_to_one")
        train_ids = labels_df.loc[labels_df[schema.SPLIT] == schema.TRAIN, schema.SUBJECT_ID].unique()
        codes, numeric = choose_vocabulary(events_dir, train_ids, config.min_code_subjects)
        static = _static_codes(events_dir, codes)
        columns = column_table(codes, numeric, static, config)
        col_index = {(c, a, w): i for i, (c, a, w) in enumerate(zip(columns["code"], columns["agg"], columns["window"], strict=True))}
        code_index = {c: i for i, c in enumerate(codes)}

        labels_df = labels_df.sort_values([schema.SUBJECT_ID, schema.PREDICTION_TIME], kind="stable").reset_index(drop=True)
        blocks = []
        shard_paths = sorted(events_dir.glob("*.parquet"))
        for shard in shard_paths:
            events = pq.read_table(shard, columns=[schema.SUBJECT_ID, schema.TIME, schema.CODE, schema.NUMERIC_VALUE])
            shard_subjects = np.unique(events.column(schema.SUBJECT_ID).to_numpy())
            rows = np.flatnonzero(np.isin(labels_df[schema.SUBJECT_ID].to_numpy(), shard_subjects))
            if rows.size == 0:
                continue
            blocks.append(
                shard_block(events, labels_df.iloc[rows], rows, code_index, static, numeric, col_index, config)
            )
        n_rows, n_cols = len(labels_df), len(columns)
        if blocks:
            r = np.concatenate([b[0] for b in blocks])
            c = np.concatenate([b[1] for b in blocks])
            v = np.concatenate([b[2] for b in blocks])
        else:
            r = c = np.zeros(0, np.int64)
            v = np.zeros(0, np.float32)
        X = sp.csr_matrix((v, (r, c)), shape=(n_rows, n_cols), dtype=np.float32)
        X.sum_duplicates()
        X.sort_indices()
        columns["description"] = readable_names(columns, _descriptions(codes_path))
        matrix = _write(out_dir, X, labels_df, columns)
        counts.update(rows=n_rows, columns=n_cols, nonzeros=int(X.nnz), shards=len(shard_paths))
    return matrix


def shard_block(events, labels_df, row_ids, code_index, static, numeric, col_index, config):
    """(row, col, value) triplets for one shard's labels. Rows are global row ids."""
    subj = events.column(schema.SUBJECT_ID).to_numpy()
    code_arr = events.column(schema.CODE).to_numpy(zero_copy_only=False)
    codes_idx = pd.Series(code_arr).map(code_index).to_numpy(dtype=np.float64, na_value=np.nan)
    keep = ~np.isnan(codes_idx)
    time_null = events.column(schema.TIME).is_null().to_numpy(zero_copy_only=False)
    time = pc.fill_null(events.column(schema.TIME).cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    values = events.column(schema.NUMERIC_VALUE).to_numpy(zero_copy_only=False).astype(np.float64)

    l_subj = labels_df[schema.SUBJECT_ID].to_numpy(np.int64)
    l_time = labels_df[schema.PREDICTION_TIME].to_numpy("datetime64[us]").astype(np.int64)
    out_r, out_c, out_v = [], [], []

    # Age at prediction time from the birth event.
    birth_mask = (code_arr == schema.BIRTH_CODE) & ~time_null
    b_subj, b_time = subj[birth_mask], time[birth_mask]
    order = np.argsort(b_subj, kind="stable")
    b_subj, b_time = b_subj[order], b_time[order]
    pos = np.searchsorted(b_subj, l_subj)
    found = (pos < b_subj.size) & (b_subj[np.minimum(pos, max(b_subj.size - 1, 0))] == l_subj) if b_subj.size else np.zeros(l_subj.size, bool)
    age_col = col_index[("AGE", "years/at_prediction", "t")]
    out_r.append(row_ids[found])
    out_c.append(np.full(found.sum(), age_col))
    out_v.append((l_time[found] - b_time[pos[found]]) / DAY_US / YEAR_DAYS)

    # Static codes: present at every prediction time of the subject.
    static_mask = keep & time_null
    if static_mask.any() and static:
        s_subj = subj[static_mask]
        s_col = np.array([col_index.get((c, "static/present", "static"), -1) for c in code_arr[static_mask]])
        ok = s_col >= 0
        r, c = _expand_by_subject(l_subj, row_ids, s_subj[ok], s_col[ok])
        out_r.append(r)
        out_c.append(c)
        out_v.append(np.ones(r.size))

    timed = keep & ~time_null
    t_subj, t_code, t_time, t_val = subj[timed], codes_idx[timed].astype(np.int64), time[timed], values[timed]
    code_names = np.array(list(code_index), dtype=object)
    wanted_code = [a for a in config.aggs if a in CODE_AGGS]
    wanted_value = [a for a in config.aggs if a in VALUE_AGGS]
    if wanted_code:
        _windowed(out_r, out_c, out_v, t_subj, t_code, t_time, None, l_subj, l_time, row_ids, code_names, wanted_code, col_index, config)
    has_value = ~np.isnan(t_val)
    if wanted_value and has_value.any():
        _windowed(
            out_r, out_c, out_v, t_subj[has_value], t_code[has_value], t_time[has_value], t_val[has_value],
            l_subj, l_time, row_ids, code_names, wanted_value, col_index, config,
        )
    return (
        np.concatenate(out_r).astype(np.int64),
        np.concatenate(out_c).astype(np.int64),
        np.concatenate(out_v).astype(np.float32),
    )


def _expand_by_subject(l_subj, row_ids, e_subj, e_col):
    """Pair every event of a subject with every label row of that subject."""
    order = np.argsort(l_subj, kind="stable")
    ls = l_subj[order]
    lo = np.searchsorted(ls, e_subj, "left")
    hi = np.searchsorted(ls, e_subj, "right")
    n = hi - lo
    rep = np.repeat(np.arange(e_subj.size), n)
    offs = np.arange(rep.size) - np.repeat(np.cumsum(n) - n, n)
    return row_ids[order[lo[rep] + offs]], e_col[rep]


def _windowed(out_r, out_c, out_v, e_subj, e_code, e_time, e_val, l_subj, l_time, row_ids, code_names, aggs, col_index, config):
    """Append triplets for ``aggs`` over every window, for events of one kind."""
    if e_subj.size == 0:
        return
    order = np.lexsort((e_time, e_code, e_subj))
    e_subj, e_code, e_time = e_subj[order], e_code[order], e_time[order]
    if e_val is not None:
        e_val = e_val[order]
    # Groups: one per (subject, code), in sorted order.
    new_group = np.r_[True, (e_subj[1:] != e_subj[:-1]) | (e_code[1:] != e_code[:-1])]
    g_start = np.flatnonzero(new_group)
    g_of_event = np.cumsum(new_group) - 1
    g_subj, g_code = e_subj[g_start], e_code[g_start]
    # Pair each label with each group of its subject.
    pair_label, pair_group = _expand_pairs(l_subj, g_subj)
    if pair_label.size == 0:
        return
    pt = l_time[pair_label]
    # Dense time ranks make (group, time) a single sortable int64 key.
    bounds = [pt] + [pt - window_us(w) for w in config.windows if w != "full"]
    all_times = np.concatenate([e_time, *bounds])
    uniq, inverse = np.unique(all_times, return_inverse=True)
    width = np.int64(uniq.size + 1)
    ev_key = g_of_event * width + inverse[: e_time.size]
    rank_of = iter(np.split(inverse[e_time.size :], len(bounds)))
    hi = np.searchsorted(ev_key, pair_group * width + next(rank_of), "right")
    g_lo = g_start[pair_group]
    if e_val is not None:
        csum = np.r_[0.0, np.cumsum(e_val)]
        csq = np.r_[0.0, np.cumsum(e_val * e_val)]
    for window in config.windows:
        lo = g_lo if window == "full" else np.searchsorted(ev_key, pair_group * width + next(rank_of), "right")
        n = hi - lo
        ok = n > 0
        if not ok.any():
            continue
        p_lo, p_hi, p_n = lo[ok], hi[ok], n[ok]
        rows = row_ids[pair_label[ok]]
        codes = code_names[g_code[pair_group[ok]]]
        for agg in aggs:
            cols = np.fromiter((col_index.get((c, agg, window), -1) for c in codes), np.int64, codes.size)
            if agg == "code/count" or agg == "value/count":
                vals = p_n.astype(np.float64)
            elif agg == "value/sum":
                vals = csum[p_hi] - csum[p_lo]
            elif agg == "value/sum_sqd":
                vals = csq[p_hi] - csq[p_lo]
            elif agg == "value/mean":
                vals = (csum[p_hi] - csum[p_lo]) / p_n
            elif agg == "value/last":
                vals = e_val[p_hi - 1]
            elif agg in ("value/min", "value/max"):
                vals = _range_reduce(e_val, p_lo, p_hi, np.minimum if agg == "value/min" else np.maximum)
            else:  # pragma: no cover - FeatureConfig validates aggs
                raise ValueError(agg)
            keep = cols >= 0
            out_r.append(rows[keep])
            out_c.append(cols[keep])
            out_v.append(vals[keep])


def _expand_pairs(l_subj, g_subj):
    """All (label index, group index) pairs that share a subject; groups sorted by subject."""
    lo = np.searchsorted(g_subj, l_subj, "left")
    hi = np.searchsorted(g_subj, l_subj, "right")
    n = hi - lo
    pair_label = np.repeat(np.arange(l_subj.size), n)
    offs = np.arange(pair_label.size) - np.repeat(np.cumsum(n) - n, n)
    return pair_label, lo[pair_label] + offs


def _range_reduce(values, lo, hi, ufunc):
    """``ufunc.reduce(values[lo:hi])`` for many non-empty ranges at once."""
    padded = np.r_[values, 0.0]
    idx = np.empty(lo.size * 2, np.int64)
    idx[0::2], idx[1::2] = lo, hi
    return ufunc.reduceat(padded, idx)[0::2]


def _static_codes(events_dir: Path, codes: list[str]) -> set[str]:
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT DISTINCT code FROM read_parquet('{Path(events_dir) / '*.parquet'}') WHERE time IS NULL"
    ).fetchall()
    con.close()
    return {r[0] for r in rows} & set(codes)


def _descriptions(codes_path: Path | None) -> dict[str, str]:
    if codes_path is None or not Path(codes_path).is_file():
        return {}
    table = pq.read_table(codes_path, columns=[schema.CODE, "description"])
    return {c: d for c, d in zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True) if d}


def readable_names(columns: pd.DataFrame, descriptions: dict[str, str]) -> list[str]:
    """"HbA1c ... (LOINC 4548-4), last value, 365 days" style names."""
    names = []
    for code, agg, window in zip(columns["code"], columns["agg"], columns["window"], strict=True):
        if code == "AGE":
            names.append("Age in years at prediction time")
            continue
        vocab, _, local = code.partition("//")
        label = f"{descriptions[code]} ({vocab} {local})" if code in descriptions else code
        if window == "static":
            names.append(label)
            continue
        span = "all history" if window == "full" else f"{window[:-1]} days"
        names.append(f"{label}, {AGG_NAMES[agg]}, {span}")
    return names


def _write(out_dir: Path, X: sp.csr_matrix, rows: pd.DataFrame, columns: pd.DataFrame) -> FeatureMatrix:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "X.partial.npz"
    sp.save_npz(tmp, X, compressed=False)
    tmp.replace(out_dir / "X.npz")
    for frame, name in ((rows, "rows.parquet"), (columns, "columns.parquet")):
        part = out_dir / (name + ".partial")
        frame.to_parquet(part, index=False)
        part.replace(out_dir / name)
    (out_dir / "shape.json").write_text(json.dumps({"rows": X.shape[0], "columns": X.shape[1], "nonzeros": int(X.nnz)}))
    return FeatureMatrix(out_dir)
