"""Windowed features at prediction times, as a sparse matrix.

Window semantics: an event at time ``e`` is in window ``w`` of prediction time ``t``
when ``t - w < e <= t``; the ``full`` window holds every event with ``e <= t``.
Static events (null time) are features at every prediction time of their subject.
(MEDS-Tab anchors each window at the subject's last event at or before ``t`` instead;
the two agree whenever ``t`` is an event time, as with ACES triggers.)

Columns are named ``code/agg/window`` (MEDS-Tab style), for example
``LOINC//4548-4/value/last/365d``; ``columns.parquet`` also carries the parts and a
readable name. Unstored matrix entries mean "no such event in the window": XGBoost
treats them as missing, not as zero.

Aggregations: MEDS-Tab's ``static/present``, ``static/first``, ``code/count``,
``value/count``, ``value/sum``, ``value/sum_sqd``, ``value/min``, ``value/max``; and
``value/mean``, ``value/last``, ``value/slope`` (least squares, per year, needs two
values at different times, and with ``slope_min_days`` values spanning that many days),
``code/days_since_last`` (full window only), age in years at ``t``.

The algorithm is incremental, never a join: events are sorted by (subject, code,
time); for each prediction time and each of its subject's codes the window bounds are
two binary searches, counts, sums and slopes come from prefix sums, min/max from range
reductions. Work and memory grow with the events and labels of one shard; shards run
in parallel worker processes and their triplets are merged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
from pydantic import Field, field_validator

from forewarn.features.labels import DAY_US, YEAR_DAYS, split_rows
from forewarn.records import schema
from forewarn.records.config import Strict
from forewarn.records.progress import stage

CODE_AGGS = ("code/count", "code/days_since_last")
VALUE_AGGS = (
    "value/count", "value/sum", "value/sum_sqd", "value/min", "value/max", "value/mean", "value/last", "value/slope",
)
STATIC_AGGS = ("static/present", "static/first")
AGG_NAMES = {
    "code/count": "count",
    "code/days_since_last": "days since last",
    "value/count": "number of values",
    "value/sum": "sum",
    "value/sum_sqd": "sum of squares",
    "value/min": "minimum",
    "value/max": "maximum",
    "value/mean": "mean value",
    "value/last": "last value",
    "value/slope": "slope per year",
    "static/present": "present",
    "static/first": "value",
    "years/at_prediction": "at prediction time",
}
AGE = ("AGE", "years/at_prediction", "t")
YEAR_US = DAY_US * YEAR_DAYS


class FeatureConfig(Strict):
    """Which windows and aggregations, and how the code vocabulary is chosen."""

    windows: list[str] = Field(default=["30d", "365d", "full"], min_length=1)
    aggs: list[str] = Field(
        default=["code/count", "code/days_since_last", "value/mean", "value/min", "value/max", "value/last", "value/slope"],
        min_length=1,
    )
    min_code_subjects: int = Field(
        11, ge=1,
        description="a code enters the vocabulary when this many train subjects have it; the default, 11, keeps "
        "codes held by 1-10 people out of the column names that leave the site with the model",
    )
    min_code_frequency: float = Field(0.0, ge=0, le=1, description="... and at least this share of train subjects")
    rollup_icd10: bool = Field(True, description="also count ICD-10 codes at their 3-character category (E11.9 -> E11)")
    parent_codes: bool = Field(True, description="also count codes at the parent_codes of metadata/codes.parquet")
    slope_min_days: int = Field(
        0, ge=0,
        description="value/slope only where the window's values span at least this many days (first to last); 0: any "
        "two values at different times. Two values a few days apart give a per-year slope of their noise",
    )
    audit_vocabularies: list[str] = Field(
        default_factory=lambda: [schema.RACE_VOCABULARY, schema.ETHNICITY_VOCABULARY],
        description="vocabularies whose codes (``<vocabulary>//...``, matched ignoring case) are never predictors: "
        "race and ethnicity are the fairness audit's subgroups. [] lets them into the vocabulary like any code",
    )
    n_workers: int = Field(1, ge=0, description="worker processes for shards; 0 means one per core")
    batch_subjects: int = Field(
        500, ge=1, description="subjects computed at once within a shard: bounds memory, does not change the matrix"
    )

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
        allowed = CODE_AGGS + VALUE_AGGS + STATIC_AGGS
        bad = [a for a in value if a not in allowed]
        if bad:
            raise ValueError(f"aggs must be among {list(allowed)}; got {bad}.")
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


# --- vocabulary -------------------------------------------------------------------


def parent_map(codes: list[str], metadata_parents: dict[str, list[str]], config: FeatureConfig) -> dict[str, list[str]]:
    """Each code's roll-up targets: its ICD-10 category and its metadata parents."""
    out: dict[str, list[str]] = {}
    for code in codes:
        parents = list(metadata_parents.get(code, [])) if config.parent_codes else []
        vocab, _, local = code.partition("//")
        if config.rollup_icd10 and vocab in ("ICD10CM", "ICD10") and len(local.replace(".", "")) > 3:
            parents.append(f"{vocab}//{local[:3]}")
        parents = [p for p in dict.fromkeys(parents) if p != code]
        if parents:
            out[code] = parents
    return out


@dataclass
class Vocabulary:
    codes: list[str]
    numeric: set[str]
    static: set[str]
    parents: dict[str, list[str]] = field(default_factory=dict)


EVENT_BATCH_ROWS = 1 << 16  # rows read at once from a shard


def _code_batches(events_dir: Path, columns: list[str]):
    """Each shard's events in record batches of ``columns``, codes dictionary-encoded:
    ``(shard index, batch, code dictionary as a list, code indices)``. Only one batch of
    one shard is in memory at a time, and each distinct code is a Python string once per
    batch, not once per event."""
    for n, path in enumerate(sorted(Path(events_dir).glob("*.parquet"))):
        with pq.ParquetFile(path, read_dictionary=[schema.CODE], pre_buffer=False, buffer_size=1 << 20) as f:
            for batch in f.iter_batches(batch_size=EVENT_BATCH_ROWS, columns=columns, use_threads=False):
                codes = _dictionary(batch.column(batch.schema.get_field_index(schema.CODE)))
                yield n, batch, codes.dictionary.to_pylist(), codes.indices.to_numpy(zero_copy_only=False)


def _dictionary(column) -> pa.DictionaryArray:
    """A code column (array or chunked array, dictionary-encoded or not) as one DictionaryArray."""
    if isinstance(column, pa.ChunkedArray):
        if not pa.types.is_dictionary(column.type):
            column = pc.dictionary_encode(column)
        column = column.unify_dictionaries().combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if isinstance(column, pa.ChunkedArray):  # pragma: no cover - combine_chunks of an empty column
            column = pa.array([], pa.dictionary(pa.int32(), pa.string()))
    elif not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    return column


def distinct_codes(events_dir: Path) -> list[str]:
    """Every code in the events (sorted), read dictionary-encoded."""
    seen: set[str] = set()
    for _, _, dictionary, idx in _code_batches(events_dir, [schema.CODE]):
        seen.update(dictionary[i] for i in np.unique(idx))
    seen.discard(None)
    return sorted(seen)


def choose_vocabulary(
    events_dir: Path, train_subjects: np.ndarray, config: FeatureConfig, metadata_parents: dict[str, list[str]] | None = None
) -> Vocabulary:
    """Codes (rolled up to parents when configured) seen in enough train subjects.

    Only the train split decides the vocabulary, so held-out data never shapes the
    columns. The shards are read batch by batch with dictionary-encoded codes; each
    code's distinct train subjects are counted shard by shard (MEDS shards by subject;
    if a subject turns up in two shards, the count is redone over all shards at once).
    """
    train = np.unique(np.asarray(train_subjects, np.int64))
    n_train = max(1, train.size)
    threshold = max(config.min_code_subjects, int(np.ceil(config.min_code_frequency * n_train)))
    scan = _scan_codes(events_dir, train, config, metadata_parents or {}, per_shard=True)
    if scan is None:
        scan = _scan_codes(events_dir, train, config, metadata_parents or {}, per_shard=False)
    names, subjects, numeric, timed, parents = scan
    audit = {v.casefold() for v in config.audit_vocabularies}
    chosen = sorted(names[i] for i in np.flatnonzero(subjects >= threshold)
                    if "//" not in names[i] or names[i].partition("//")[0].casefold() not in audit)
    index = {c: i for i, c in enumerate(names)}
    return Vocabulary(chosen, {c for c in chosen if numeric[index[c]]}, {c for c in chosen if not timed[index[c]]}, parents)


def _scan_codes(events_dir: Path, train: np.ndarray, config: FeatureConfig, metadata_parents: dict[str, list[str]], per_shard: bool):
    """``(names, train subjects per name, has a value, has a time, parents)`` over every
    code and roll-up parent, as the vocabulary query defines them: train rows other than
    birth, each row also counted once under each parent of its code. With ``per_shard``
    the subjects are counted shard by shard; ``None`` when a subject is in two shards."""
    ids: dict[str, int] = {}  # every code and roll-up parent -> id
    parents_of: list[np.ndarray] = []  # per id: its parents' ids (roll-up is one level)
    event_codes: set[str] = set()
    parents: dict[str, list[str]] = {}

    def code_id(code: str) -> int:
        i = ids.get(code)
        if i is None:
            i = ids[code] = len(ids)
            parents_of.append(np.zeros(0, np.int64))
        return i

    numeric, timed, subjects = np.zeros(0, bool), np.zeros(0, bool), np.zeros(0, np.int64)
    seen_in = np.full(train.size, -1, np.int64)  # the shard each train subject was seen in
    pairs: list[np.ndarray] = []  # unique (code << 32) | train subject index, this shard (or all)
    current = -1

    def count():
        nonlocal subjects
        if pairs:
            both = _expand_parents(np.unique(np.concatenate(pairs)), parents_of)
            pairs.clear()
            subjects = _grow(subjects, len(ids))
            subjects += np.bincount(both >> 32, minlength=len(ids))[: len(ids)]

    columns = [schema.SUBJECT_ID, schema.TIME, schema.CODE, schema.NUMERIC_VALUE]
    for shard, batch, dictionary, idx in _code_batches(events_dir, columns):
        if shard != current and per_shard:
            count()
        current = shard
        present = np.unique(idx)
        local = np.full(len(dictionary), -1, np.int64)
        for i in present:
            code = dictionary[i]
            if code is None:
                continue
            local[i] = code_id(code)
            if code not in event_codes:
                event_codes.add(code)
                ps = parent_map([code], metadata_parents, config).get(code)
                if ps:
                    parents[code] = ps
                    parents_of[local[i]] = np.array([code_id(p) for p in ps], np.int64)
        subj = batch.column(schema.SUBJECT_ID).to_numpy(zero_copy_only=False)
        pos = np.clip(np.searchsorted(train, subj), 0, max(train.size - 1, 0))
        keep = (train[pos] == subj) if train.size else np.zeros(subj.size, bool)
        keep &= local[idx] >= 0
        if schema.BIRTH_CODE in dictionary:
            keep &= idx != dictionary.index(schema.BIRTH_CODE)
        if not keep.any():
            continue
        code, tpos = local[idx[keep]], pos[keep]
        if per_shard:
            other = seen_in[tpos]
            if ((other >= 0) & (other != shard)).any():
                return None
            seen_in[tpos] = shard
        value = batch.column(schema.NUMERIC_VALUE).to_numpy(zero_copy_only=False)[keep]  # nulls come back as NaN
        has_time = ~batch.column(schema.TIME).is_null().to_numpy(zero_copy_only=False)[keep]
        numeric, timed = _grow(numeric, len(ids)), _grow(timed, len(ids))
        numeric[np.unique(code[~np.isnan(value)])] = True
        timed[np.unique(code[has_time])] = True
        pairs.append(np.unique((code << 32) | tpos))
    count()
    _release_unused()  # hand the read buffers back now, not at exit
    numeric, timed, subjects = (_grow(a, len(ids)) for a in (numeric, timed, subjects))
    # A parent's rows are its children's rows: it has a value (a time) when one of them has.
    own_numeric, own_timed = numeric.copy(), timed.copy()
    for code, ps in parents.items():
        for p in ps:
            numeric[ids[p]] |= own_numeric[ids[code]]
            timed[ids[p]] |= own_timed[ids[code]]
    return list(ids), subjects, numeric, timed, parents


def _grow(a: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([a, np.zeros(n - a.size, a.dtype)]) if a.size < n else a


def _expand_parents(pairs: np.ndarray, parents_of: list[np.ndarray]) -> np.ndarray:
    """``(code << 32) | subject`` pairs plus the same pairs under each code's roll-up parents, unique."""
    codes = pairs >> 32
    n_par = np.array([parents_of[c].size for c in range(len(parents_of))], np.int64)
    reps = n_par[codes] if n_par.size else np.zeros(codes.size, np.int64)
    if not reps.any():
        return pairs
    flat = np.concatenate([parents_of[c] for c in range(len(parents_of))])
    start = np.cumsum(n_par) - n_par
    which = np.repeat(np.arange(pairs.size), reps)
    within = np.arange(which.size) - np.repeat(np.cumsum(reps) - reps, reps)
    parent = flat[start[codes[which]] + within]
    low = pairs[which] & 0xFFFFFFFF
    return np.unique(np.concatenate([pairs, (parent << 32) | low]))


SPEED_SETTINGS = ("n_workers", "batch_subjects")  # change how fast the matrix is made, not the matrix


def recorded_settings(settings: dict, speed: FeatureConfig) -> tuple[FeatureConfig, list[str]]:
    """The feature settings a model was trained with, from the ``features`` its study
    recorded (``settings``), to compute its columns on other data with ``speed``'s speed
    settings. A setting the record does not name did not exist when it was made, so it
    takes the default (which keeps the code's earlier behaviour). Returns the settings and
    the names of those recorded that this code no longer knows (left out). Raises
    pydantic's ValidationError when a recorded value is no longer valid."""
    known = {k: v for k, v in settings.items() if k in FeatureConfig.model_fields and k not in SPEED_SETTINGS}
    dropped = sorted(k for k in settings if k not in FeatureConfig.model_fields)
    return FeatureConfig(**known, **{k: getattr(speed, k) for k in SPEED_SETTINGS}), dropped


def subjects_by_shard(events_dir: Path) -> np.ndarray:
    """The subject ids of a pull's events, checked to be sharded by subject (MEDS's rule,
    which featurization relies on: a person's windows see one shard). Raises ValueError
    naming the shards when a subject's events are in more than one."""
    shards = sorted(Path(events_dir).glob("*.parquet"))
    held = [np.unique(pq.read_table(p, columns=[schema.SUBJECT_ID]).column(0).to_numpy()) for p in shards]
    ids, counts = np.unique(np.concatenate(held), return_counts=True) if held else (np.array([], np.int64), [])
    split = int((np.asarray(counts) > 1).sum())
    if split:
        shared = [p.name for p, h in zip(shards, held, strict=True) if np.isin(h, ids[np.asarray(counts) > 1]).any()]
        raise ValueError(f"{events_dir}: {split:,} subject(s) have events in more than one shard ({', '.join(shared[:5])}"
                         f"{', ...' if len(shared) > 5 else ''}); MEDS keeps each subject in one shard. Re-shard the "
                         "events by subject (a Forewarn pull does).")
    return ids


def vocabulary_of(columns: pd.DataFrame, events_dir: Path, metadata_parents: dict[str, list[str]], config: FeatureConfig) -> Vocabulary:
    """The vocabulary a given column table implies (its codes, with this site's roll-up)."""
    codes = sorted(set(columns["code"]) - {AGE[0]})
    numeric = set(columns.loc[columns["agg"].str.startswith("value/") | (columns["agg"] == "static/first"), "code"])
    static = set(columns.loc[columns["window"] == "static", "code"])
    return Vocabulary(codes, numeric, static, parent_map(distinct_codes(events_dir), metadata_parents, config))


def column_table(vocab: Vocabulary, config: FeatureConfig) -> pd.DataFrame:
    """The ordered column list: age, then code by code (static codes get static columns)."""
    cols = [AGE]
    for code in vocab.codes:
        if code in vocab.static:
            cols.append((code, "static/present", "static"))
            if "static/first" in config.aggs and code in vocab.numeric:
                cols.append((code, "static/first", "static"))
            continue
        for window in config.windows:
            for agg in config.aggs:
                if agg in STATIC_AGGS or (agg == "code/days_since_last" and window != "full"):
                    continue
                if agg in CODE_AGGS or code in vocab.numeric:
                    cols.append((code, agg, window))
    frame = pd.DataFrame(cols, columns=["code", "agg", "window"])
    frame.insert(0, "name", frame["code"] + "/" + frame["agg"] + "/" + frame["window"])
    return frame


# --- the computation --------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs for one shard (small and picklable)."""

    col_index: dict[tuple[str, str, str], int]
    code_index: dict[str, int]
    vocab: Vocabulary
    config: FeatureConfig


_ARROW_POOL: list[pa.MemoryPool] = []  # the pool _malloc_pool replaced (Arrow's C++ default)


@contextmanager
def _malloc_pool() -> Iterator[None]:
    """Arrow allocates from the C library's malloc while featurizing.

    pyarrow's default pool (mimalloc) keeps tens of MB of freed Parquet decode buffers
    reserved, and at small and mid sizes that was most of featurization's memory above
    the imports; with malloc, ``release_unused`` also hands freed NumPy memory back.
    Buffers remember their pool, so switching back is safe; another thread allocating
    meanwhile simply uses malloc too. An explicit ``ARROW_DEFAULT_MEMORY_POOL`` is kept.
    """
    previous = pa.default_memory_pool()
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL") or previous.backend_name == "system":
        yield
        return
    pa.set_memory_pool(pa.system_memory_pool())
    previous.release_unused()
    _ARROW_POOL.append(previous)
    try:
        yield
    finally:
        _ARROW_POOL.pop()
        pa.set_memory_pool(previous)


def _release_unused() -> None:
    """Hand freed memory back to the system: malloc's (``malloc_trim``, which NumPy's
    freed arrays also use) and that of Arrow's C++ default pool, which some Arrow
    internals allocate from whatever pool Python code chose."""
    pa.default_memory_pool().release_unused()
    if _ARROW_POOL:
        _ARROW_POOL[-1].release_unused()


def featurize(
    events_dir: Path,
    labels: pa.Table,
    splits: pd.DataFrame,
    out_dir: Path,
    config: FeatureConfig,
    codes_path: Path | None = None,
    columns: pd.DataFrame | None = None,
    *,
    map_shards: Callable[[Callable, list], list] | None = None,
) -> FeatureMatrix:
    """Compute the feature matrix for ``labels`` from ``events_dir`` into ``out_dir``.

    ``columns`` (a model's ``columns.parquet``) fixes the columns instead of choosing a
    vocabulary: how a model trained elsewhere is applied to this site's data.

    ``map_shards(func, jobs)`` runs the per-shard jobs elsewhere (for example on Dask,
    ``forewarn.flows.executor.shard_mapper``) and returns ``[func(job) for job in jobs]``
    in order; ``func`` is the picklable module-level ``_shard_job`` and each job is a
    tuple ``(shard path, label subjects, label times, plan)`` whose last three items are
    the same objects in every job. The shard paths must be readable where the jobs run.
    Without it, shards run in ``config.n_workers`` local processes. The output does not
    depend on where the shards ran.
    """
    events_dir, out_dir = Path(events_dir), Path(out_dir)
    with stage("featurize") as counts, _malloc_pool():
        labels_df = split_rows(labels.to_pandas(), splits)
        labels_df = labels_df.sort_values([schema.SUBJECT_ID, schema.PREDICTION_TIME], kind="stable").reset_index(drop=True)
        train_ids = labels_df.loc[labels_df[schema.SPLIT] == schema.TRAIN, schema.SUBJECT_ID].unique()
        descriptions, metadata_parents = _codes_metadata(codes_path)
        chosen = columns is None
        if chosen:
            vocab = choose_vocabulary(events_dir, train_ids, config, metadata_parents)
            columns = column_table(vocab, config)
        else:
            vocab = vocabulary_of(columns, events_dir, metadata_parents, config)
            columns = columns[["name", "code", "agg", "window"]].copy()
        plan = Plan(
            {(c, a, w): i for i, (c, a, w) in enumerate(zip(columns["code"], columns["agg"], columns["window"], strict=True))},
            {c: i for i, c in enumerate(vocab.codes)},
            vocab,
            config,
        )
        l_subj = labels_df[schema.SUBJECT_ID].to_numpy(np.int64)
        l_time = labels_df[schema.PREDICTION_TIME].to_numpy("datetime64[us]").astype(np.int64)
        shard_paths = sorted(events_dir.glob("*.parquet"))
        # Each shard's block goes to disk as it is made; the matrix is then filled shard
        # by shard, so the peak is the output plus one shard, not every block at once.
        spill = out_dir / f".shards-{os.getpid()}"
        shutil.rmtree(spill, ignore_errors=True)
        spill.mkdir(parents=True)
        spill_dir = str(spill.resolve())
        jobs = [(str(p.resolve()), l_subj, l_time, plan, spill_dir) for p in shard_paths]
        workers: int | str = min(len(jobs), config.n_workers or os.cpu_count() or 1)
        n_rows, n_cols = len(labels_df), len(columns)
        try:
            if map_shards is not None:
                workers = getattr(map_shards, "description", "map_shards")
                blocks = list(map_shards(_shard_job, jobs))
            elif workers > 1:
                with ProcessPoolExecutor(workers) as pool:
                    blocks = list(pool.map(_shard_job, jobs))
            else:
                blocks = [_shard_job(job) for job in jobs]
            blocks = [(*b, spill_dir) if isinstance(b[0], str) else b for b in blocks]
            X = _assemble(blocks, n_rows, n_cols)
        finally:
            shutil.rmtree(spill, ignore_errors=True)
        if chosen:
            X, columns = _drop_empty(X, columns, (labels_df[schema.SPLIT] == schema.TRAIN).to_numpy())
            n_cols = len(columns)
        columns["description"] = readable_names(columns, descriptions)
        matrix = _write(out_dir, X, labels_df, columns)
        counts.update(rows=n_rows, columns=n_cols, nonzeros=int(X.nnz), shards=len(shard_paths), workers=workers)
    return matrix


def _drop_empty(X: sp.csr_matrix, columns: pd.DataFrame, train: np.ndarray) -> tuple[sp.csr_matrix, pd.DataFrame]:
    """The chosen columns less those no train row holds a value in. The vocabulary counts
    a code anywhere in a train subject's record (as MEDS-Tab does), so codes recorded only
    after every prediction time (the outcome's own, its treatments, death) made columns no
    feature could fill: candidate predictors that look like leakage and are not, and that
    inflate the candidate count. No model can use such a column, so none changes."""
    held = np.bincount(X[train].indices, minlength=X.shape[1]) > 0 if train.any() else np.ones(X.shape[1], bool)
    held |= (columns["code"] == AGE[0]).to_numpy()  # age is no code: its column stays (subgroups read it)
    if held.all():
        return X, columns
    return X[:, np.flatnonzero(held)].tocsr(), columns.loc[held].reset_index(drop=True)


def _shard_job(job) -> tuple[np.ndarray, sp.csr_matrix] | tuple[str, int, int]:
    """One shard's rows (global row ids, ascending) and their CSR block (float32 values,
    int32 indices). With a fifth job item (a folder) the block is written there as
    ``<digest of the shard path>.{rows,indptr,indices,data}.npy`` and only ``(stem, rows, non-zeros)``
    travels back."""
    with _malloc_pool():
        return _shard_job_in(job)


def _shard_job_in(job) -> tuple[np.ndarray, sp.csr_matrix] | tuple[str, int, int]:
    path, l_subj, l_time, plan = job[:4]
    events = _read_labelled(path, l_subj)
    e_subj = events.column(schema.SUBJECT_ID).to_numpy()
    if e_subj.size > 1 and (e_subj[1:] < e_subj[:-1]).any():  # pulls write shards sorted; other MEDS data may not be
        order = np.argsort(e_subj, kind="stable")
        events, e_subj = events.take(order), e_subj[order]
        del order
    lookup = _ShardLookup.of(_dictionary(events.column(schema.CODE)).dictionary, plan)
    subjects = np.unique(e_subj)
    rows = np.flatnonzero(np.isin(l_subj, subjects))
    n_cols = len(plan.col_index)
    # Subjects in batches: the window arrays grow with a batch, not with the shard.
    parts = []
    for lo in range(0, subjects.size, plan.config.batch_subjects):
        first, last = subjects[lo], subjects[min(lo + plan.config.batch_subjects, subjects.size) - 1]
        batch_rows = rows[(l_subj[rows] >= first) & (l_subj[rows] <= last)]
        if batch_rows.size == 0:
            continue
        a, b = np.searchsorted(e_subj, [first, last], side="left")[0], np.searchsorted(e_subj, last, side="right")
        r, c, v = shard_block(events.slice(a, b - a), l_subj[batch_rows], l_time[batch_rows], batch_rows, plan, lookup)
        part = sp.csr_matrix((v, (np.searchsorted(batch_rows, r), c)), shape=(batch_rows.size, n_cols), dtype=np.float32)
        del r, c, v
        part.sort_indices()
        parts.append(part)
        _release_unused()  # the batch's freed arrays go back now
    del events
    block = sp.vstack(parts, format="csr", dtype=np.float32) if parts else sp.csr_matrix((0, n_cols), dtype=np.float32)
    del parts
    block.sort_indices()
    if len(job) < 5:
        return rows, block
    stem = hashlib.sha1(str(path).encode()).hexdigest()[:16]  # shard files of several folders may share a name
    parts = {"rows": rows.astype(np.int64), "indptr": block.indptr.astype(np.int64),
             "indices": block.indices.astype(np.int32), "data": block.data.astype(np.float32)}
    for name, array in parts.items():
        np.save(Path(job[4]) / f"{stem}.{name}.npy", array)
    return stem, int(rows.size), int(block.nnz)


def _assemble(blocks: list, n_rows: int, n_cols: int) -> sp.csr_matrix:
    """The matrix in label order from the shard blocks (in memory as ``(rows, block)``,
    or spilled to disk as ``(stem, rows, nnz, folder)``); labels without events get
    empty rows. For spilled blocks the row lengths come first (the output's ``indptr``),
    then each shard's values are scattered into place, one shard in memory at a time."""
    if not blocks:
        return sp.csr_matrix((n_rows, n_cols), dtype=np.float32)
    if not isinstance(blocks[0][0], str):
        return _assemble_in_memory(blocks, n_rows, n_cols)
    folder = Path(blocks[0][3])

    def part(stem: str, name: str) -> np.ndarray:
        return np.load(folder / f"{stem}.{name}.npy")

    row_len = np.zeros(n_rows, np.int64)
    for stem, n, _nnz, _ in blocks:
        if n:
            row_len[part(stem, "rows")] = np.diff(part(stem, "indptr"))
    nnz = int(row_len.sum())
    index_type = np.int32 if max(nnz, n_cols) < np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(n_rows + 1, index_type)
    np.cumsum(row_len, out=indptr[1:])
    del row_len
    data = np.empty(nnz, np.float32)
    indices = np.empty(nnz, index_type)
    for stem, _n, block_nnz, _ in blocks:
        if not block_nnz:
            continue
        rows, local = part(stem, "rows"), part(stem, "indptr")
        dest = np.repeat(indptr[rows].astype(np.int64) - local[:-1], np.diff(local)) + np.arange(block_nnz)
        data[dest] = part(stem, "data")
        indices[dest] = part(stem, "indices")
        del dest
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols), copy=False)


def _assemble_in_memory(blocks: list[tuple[np.ndarray, sp.csr_matrix]], n_rows: int, n_cols: int) -> sp.csr_matrix:
    rows = [b[0] for b in blocks if b[0].size]
    mats = [b[1] for b in blocks if b[0].size]
    covered = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    missing = np.setdiff1d(np.arange(n_rows), covered)
    if missing.size:
        rows.append(missing)
        mats.append(sp.csr_matrix((missing.size, n_cols), dtype=np.float32))
    if not mats:
        return sp.csr_matrix((n_rows, n_cols), dtype=np.float32)
    order = np.concatenate(rows)
    stacked = sp.vstack(mats, format="csr", dtype=np.float32)
    del mats
    blocks.clear()  # the caller's list: free the blocks before the rows are reordered
    X = stacked[np.argsort(order, kind="stable")] if not np.array_equal(order, np.arange(n_rows)) else stacked
    X.sort_indices()
    return X


def _read_labelled(path: str, l_subj: np.ndarray) -> pa.Table:
    """The shard's events of labelled subjects only (other subjects' events never reach
    a feature), read batch by batch, codes dictionary-encoded (one dictionary for the
    shard), values as stored (float32 in MEDS). Each column is put together on its own,
    so the peak is the kept events plus one column, not twice the kept events."""
    labelled = np.unique(l_subj)
    columns = [schema.SUBJECT_ID, schema.TIME, schema.CODE, schema.NUMERIC_VALUE]
    parts: dict[str, list] = {c: [] for c in columns}
    with pq.ParquetFile(path, read_dictionary=[schema.CODE], pre_buffer=False, buffer_size=1 << 20) as f:
        types = {c: f.schema_arrow.field(c).type for c in columns}
        for batch in f.iter_batches(batch_size=EVENT_BATCH_ROWS, columns=columns, use_threads=False):
            subj = batch.column(schema.SUBJECT_ID).to_numpy(zero_copy_only=False)
            pos = np.clip(np.searchsorted(labelled, subj), 0, max(labelled.size - 1, 0))
            keep = labelled[pos] == subj if labelled.size else np.zeros(subj.size, bool)
            if keep.any():
                mask = pa.array(keep)
                for c in columns:
                    parts[c].append(pc.filter(batch.column(c), mask))
            del batch
    _release_unused()
    arrays = {}
    for c in columns:
        chunks = parts.pop(c)
        arrays[c] = _dictionary(pa.chunked_array(chunks, types[c])) if c == schema.CODE else (
            pa.concat_arrays(chunks) if chunks else pa.array([], types[c]))
        del chunks
    return pa.table(arrays)


@dataclass
class _ShardLookup:
    """A shard's code dictionary resolved once: each entry's vocabulary index (-1 when
    not a feature), its roll-up parents' vocabulary indices, and per (agg, window) the
    column of each vocabulary code (-1 when none)."""

    birth: int
    code: np.ndarray
    n_parents: np.ndarray
    parent_start: np.ndarray
    parent_code: np.ndarray
    columns: dict[tuple[str, str], np.ndarray]

    @classmethod
    def of(cls, dictionary: pa.Array, plan: Plan) -> _ShardLookup:
        names = dictionary.to_pylist()
        parents = [plan.vocab.parents.get(c, ()) if c is not None else () for c in names]
        n_parents = np.array([len(ps) for ps in parents], np.int64)
        keys = {(a, w) for (_, a, w) in plan.col_index}
        return cls(
            names.index(schema.BIRTH_CODE) if schema.BIRTH_CODE in names else -1,
            np.array([plan.code_index.get(c, -1) for c in names], np.int64),
            n_parents,
            np.cumsum(n_parents) - n_parents,
            np.array([plan.code_index.get(p, -1) for ps in parents for p in ps], np.int64),
            {k: np.array([plan.col_index.get((c, *k), -1) for c in plan.vocab.codes], np.int64) for k in keys},
        )


def shard_block(events: pa.Table, l_subj: np.ndarray, l_time: np.ndarray, row_ids: np.ndarray, plan: Plan,
                lookup: _ShardLookup | None = None):
    """(row, col, value) triplets for one shard's labels; rows are global row ids and
    the labels are sorted by (subject, time)."""
    codes = _dictionary(events.column(schema.CODE))
    if lookup is None:
        lookup = _ShardLookup.of(codes.dictionary, plan)
    d_idx = codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    del codes
    subj = events.column(schema.SUBJECT_ID).to_numpy()
    time_null = events.column(schema.TIME).is_null().to_numpy(zero_copy_only=False)
    time = pc.fill_null(events.column(schema.TIME).cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    values = events.column(schema.NUMERIC_VALUE).to_numpy(zero_copy_only=False).astype(np.float64)
    out_r, out_c, out_v = [], [], []

    # Age at prediction time from the birth event.
    births = (d_idx == lookup.birth) & ~time_null
    b_subj, b_time = subj[births], time[births]
    order = np.argsort(b_subj, kind="stable")
    b_subj, b_time = b_subj[order], b_time[order]
    pos = np.clip(np.searchsorted(b_subj, l_subj), 0, max(b_subj.size - 1, 0))
    found = (b_subj[pos] == l_subj) if b_subj.size else np.zeros(l_subj.size, bool)
    out_r.append(row_ids[found])
    out_c.append(np.full(int(found.sum()), plan.col_index[AGE]))
    out_v.append((l_time[found] - b_time[pos[found]]) / YEAR_US)

    # Roll codes up to their parents: each event also counts under every parent code
    # (the copies follow the events, in event order, each event's parents in order).
    codes_idx = lookup.code[d_idx]
    reps = lookup.n_parents[d_idx]
    if reps.any():
        idx = np.repeat(np.arange(d_idx.size), reps)
        within = np.arange(idx.size) - np.repeat(np.cumsum(reps) - reps, reps)
        parent_idx = lookup.parent_code[lookup.parent_start[d_idx[idx]] + within]
        subj, time, time_null, values = (np.concatenate([a, a[idx]]) for a in (subj, time, time_null, values))
        codes_idx = np.concatenate([codes_idx, parent_idx])
        del idx, within, parent_idx
    del d_idx, reps
    keep = codes_idx >= 0

    # Static codes: present (and first value) at every prediction time of the subject.
    static = keep & time_null
    if static.any():
        s_subj, s_code, s_val = subj[static], codes_idx[static], values[static]
        first = np.unique(np.stack([s_subj, s_code]), axis=1, return_index=True)[1]
        s_subj, s_code, s_val = s_subj[first], s_code[first], s_val[first]
        for agg, vals in (("static/present", np.ones(s_subj.size)), ("static/first", s_val)):
            lut = lookup.columns.get((agg, "static"))
            cols = lut[s_code] if lut is not None else np.full(s_code.size, -1, np.int64)
            ok = (cols >= 0) & ~np.isnan(vals)
            r, which = _pair_by_subject(l_subj, s_subj[ok])
            out_r.append(row_ids[r])
            out_c.append(cols[ok][which])
            out_v.append(vals[ok][which])

    timed = keep & ~time_null
    t_subj, t_code, t_time, t_val = subj[timed], codes_idx[timed], time[timed], values[timed]
    del subj, time, time_null, values, codes_idx, keep, static, timed
    config = plan.config
    code_aggs = [a for a in config.aggs if a in CODE_AGGS]
    value_aggs = [a for a in config.aggs if a in VALUE_AGGS]
    if code_aggs:
        _windowed(out_r, out_c, out_v, t_subj, t_code, t_time, None, l_subj, l_time, row_ids, lookup.columns, code_aggs, plan)
    has_value = ~np.isnan(t_val)
    if value_aggs and has_value.any():
        _windowed(
            out_r, out_c, out_v, t_subj[has_value], t_code[has_value], t_time[has_value], t_val[has_value],
            l_subj, l_time, row_ids, lookup.columns, value_aggs, plan,
        )
    return (
        np.concatenate(out_r).astype(np.int64),
        np.concatenate(out_c).astype(np.int64),
        np.concatenate(out_v).astype(np.float32),
    )


def _pair_by_subject(l_subj: np.ndarray, e_subj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (label index, event index) pairs sharing a subject; labels sorted by subject."""
    lo = np.searchsorted(l_subj, e_subj, "left")
    n = np.searchsorted(l_subj, e_subj, "right") - lo
    which = np.repeat(np.arange(e_subj.size), n)
    offs = np.arange(which.size) - np.repeat(np.cumsum(n) - n, n)
    return lo[which] + offs, which


def _windowed(out_r, out_c, out_v, e_subj, e_code, e_time, e_val, l_subj, l_time, row_ids, col_luts, aggs, plan):
    """Append triplets for ``aggs`` over every window, for events of one kind."""
    if e_subj.size == 0:
        return
    order = np.lexsort((e_time, e_code, e_subj))
    e_subj, e_code, e_time = e_subj[order], e_code[order], e_time[order]
    # Groups: one per (subject, code), in sorted order.
    new_group = np.r_[True, (e_subj[1:] != e_subj[:-1]) | (e_code[1:] != e_code[:-1])]
    g_start = np.flatnonzero(new_group)
    g_of_event = np.cumsum(new_group) - 1
    g_subj, g_code = e_subj[g_start], e_code[g_start]
    # Pair each label with each group of its subject (groups are sorted by subject).
    pair_group, pair_label = _pair_by_subject(g_subj, l_subj)
    if pair_label.size == 0:
        return
    pt = l_time[pair_label]
    windows = plan.config.windows
    # Dense time ranks make (group, time) one sortable int64 key.
    bounds = [pt] + [pt - window_us(w) for w in windows if w != "full"]
    uniq, inverse = np.unique(np.concatenate([e_time, *bounds]), return_inverse=True)
    width = np.int64(uniq.size + 1)
    ev_key = g_of_event * width + inverse[: e_time.size]
    ranks = iter(np.split(inverse[e_time.size :], len(bounds)))
    hi = np.searchsorted(ev_key, pair_group * width + next(ranks), "right")
    prefix = _prefix_sums(e_val[order], e_time, g_of_event) if e_val is not None else {}
    vals_sorted = e_val[order] if e_val is not None else None
    for window in windows:
        lo = g_start[pair_group] if window == "full" else np.searchsorted(ev_key, pair_group * width + next(ranks), "right")
        n = hi - lo
        ok = n > 0
        if not ok.any():
            continue
        p_lo, p_hi, p_n = lo[ok], hi[ok], n[ok]
        p_start = g_start[pair_group[ok]]
        rows = row_ids[pair_label[ok]]
        codes = g_code[pair_group[ok]]
        for agg in aggs:
            if agg == "code/days_since_last" and window != "full":
                continue
            vals = _aggregate(agg, p_lo, p_hi, p_n, p_start, prefix, vals_sorted, e_time, pt[ok],
                              min_span_us=plan.config.slope_min_days * DAY_US)
            lut = col_luts.get((agg, window))
            cols = lut[codes] if lut is not None else np.full(codes.size, -1, np.int64)
            keep = (cols >= 0) & ~np.isnan(vals)
            out_r.append(rows[keep])
            out_c.append(cols[keep])
            out_v.append(vals[keep])


def _prefix_sums(v: np.ndarray, t_us: np.ndarray, group: np.ndarray) -> dict[str, np.ndarray]:
    """Inclusive running sums that restart at every (subject, code) group, so a value
    depends only on its own group's events (no rounding carried in from other codes)."""
    t = (t_us - 946_684_800_000_000) / YEAR_US  # years since 2000-01-01 keeps the sums well conditioned
    frame = pd.DataFrame({"v": v, "vv": v * v, "t": t, "tt": t * t, "tv": t * v})
    sums = frame.groupby(group, sort=False).cumsum()
    return {name: sums[name].to_numpy() for name in frame.columns}


def _aggregate(agg, lo, hi, n, start, prefix, vals, times, pt, *, min_span_us: int = 0) -> np.ndarray:
    def total(name):
        running = prefix[name]
        upper = running[hi - 1]
        lower = np.where(lo > start, running[np.maximum(lo - 1, 0)], 0.0)
        return upper - lower

    if agg in ("code/count", "value/count"):
        return n.astype(np.float64)
    if agg == "code/days_since_last":
        return (pt - times[hi - 1]) / DAY_US
    if agg == "value/sum":
        return total("v")
    if agg == "value/sum_sqd":
        return total("vv")
    if agg == "value/mean":
        return total("v") / n
    if agg == "value/last":
        return vals[hi - 1]
    if agg in ("value/min", "value/max"):
        padded = np.r_[vals, 0.0]
        idx = np.empty(lo.size * 2, np.int64)
        idx[0::2], idx[1::2] = lo, hi
        return (np.minimum if agg == "value/min" else np.maximum).reduceat(padded, idx)[0::2]
    if agg == "value/slope":
        st, stt, sv, stv = total("t"), total("tt"), total("v"), total("tv")
        denom = n * stt - st * st
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = (n * stv - st * sv) / denom
        spans = (n >= 2) & (denom > 1e-12 * np.maximum(1.0, n * stt))
        if min_span_us:
            spans &= times[hi - 1] - times[lo] >= min_span_us
        return np.where(spans, slope, np.nan)
    raise ValueError(f"unknown aggregation {agg!r}")  # pragma: no cover - FeatureConfig validates aggs


# --- names and output -------------------------------------------------------------


def _codes_metadata(codes_path: Path | None) -> tuple[dict[str, str], dict[str, list[str]]]:
    if codes_path is None or not Path(codes_path).is_file():
        return {}, {}
    table = pq.read_table(codes_path)
    codes = table.column(schema.CODE).to_pylist()
    descriptions = dict(zip(codes, table.column("description").to_pylist(), strict=True)) if "description" in table.column_names else {}
    parents = dict(zip(codes, table.column("parent_codes").to_pylist(), strict=True)) if "parent_codes" in table.column_names else {}
    return {c: d for c, d in descriptions.items() if d}, {c: p for c, p in parents.items() if p}


def readable_names(columns: pd.DataFrame, descriptions: dict[str, str]) -> list[str]:
    """"HbA1c ... (LOINC 4548-4), last value, 365 days" style names."""
    names = []
    for code, agg, window in zip(columns["code"], columns["agg"], columns["window"], strict=True):
        if (code, agg, window) == AGE:
            names.append("Age in years at prediction time")
            continue
        vocab, _, local = code.partition("//")
        label = f"{descriptions[code]} ({vocab} {local})" if code in descriptions else code.replace("//", " ")
        if window == "static":
            names.append(label if agg == "static/present" else f"{label}, value")
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
