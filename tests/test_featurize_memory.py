"""Featurization's memory-saving paths give the same results as the plain ones: the
vocabulary read batch by batch equals the SQL definition it replaced, and the matrix
does not depend on subject batches, read batches, row groups (each with its own code
dictionary), unlabelled subjects' events, or shard order."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import label_table

from forewarn.features import featurize as fz
from forewarn.features.featurize import FeatureConfig, choose_vocabulary, featurize, parent_map
from forewarn.records import schema

T = datetime(2020, 12, 31)
CODES = ["ICD10CM//E11.9", "ICD10CM//E11.65", "ICD10CM//I10", "LOCAL//A1C", "LOINC//4548-4", "LAB//X", "LAB//Y", "Gender//F",
         "STATIC//HEIGHT", "RARE//1"]
PARENTS = {"LOCAL//A1C": ["LOINC//4548-4", "LAB//GROUP"], "LOINC//4548-4": ["LAB//GROUP2"], "LAB//X": ["LAB//Y"]}


def random_events(seed: int, subjects: range) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in subjects:
        rows.append((s, datetime(1950 + s % 40, 1, 1), schema.BIRTH_CODE, np.nan))
        if s % 3:
            rows.append((s, None, "Gender//F", np.nan))
        if s % 4 == 0:
            rows.append((s, None, "STATIC//HEIGHT", float(150 + s % 40)))
        for _ in range(int(rng.integers(0, 25))):
            code = str(rng.choice(CODES[:7]))
            value = float(rng.normal(6, 2)) if code in ("LOCAL//A1C", "LAB//X") or rng.random() < 0.1 else np.nan
            rows.append((s, T - timedelta(days=int(rng.integers(-30, 800))), code, value))
    if subjects.start == 1:
        rows.append((2, T - timedelta(days=3), "RARE//1", np.nan))
    return pd.DataFrame(rows, columns=[schema.SUBJECT_ID, schema.TIME, schema.CODE, schema.NUMERIC_VALUE])


def write(folder, name: str, frame: pd.DataFrame, row_group_size: int | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        schema.SUBJECT_ID: pa.array(frame[schema.SUBJECT_ID], pa.int64()),
        schema.TIME: pa.array([None if pd.isna(t) else t for t in frame[schema.TIME]], pa.timestamp("us")),
        schema.CODE: pa.array(frame[schema.CODE], pa.string()),
        schema.NUMERIC_VALUE: pa.array([None if np.isnan(v) else v for v in frame[schema.NUMERIC_VALUE]], pa.float32()),
        schema.TEXT_VALUE: pa.array([None] * len(frame), pa.string()),
    })
    pq.write_table(schema.align(table, schema.DATA_SCHEMA), folder / f"{name}.parquet", row_group_size=row_group_size)


def sql_vocabulary(events_dir, train, config, metadata_parents):
    """The DuckDB query featurize used before it read shards batch by batch."""
    con = duckdb.connect()
    con.register("train_ids", pa.table({"subject_id": pa.array(train, pa.int64())}))
    events = f"read_parquet('{events_dir / '*.parquet'}')"
    all_codes = [r[0] for r in con.execute(f"SELECT DISTINCT code FROM {events}").fetchall()]
    parents = parent_map(all_codes, metadata_parents, config)
    con.register("parents", pa.table({"code": pa.array([c for c, ps in parents.items() for _ in ps], pa.string()),
                                       "parent": pa.array([p for ps in parents.values() for p in ps], pa.string())}))
    threshold = max(config.min_code_subjects, int(np.ceil(config.min_code_frequency * max(1, len(train)))))
    rows = con.execute(f"""
        WITH e AS (SELECT subject_id, time, code, numeric_value FROM {events} SEMI JOIN train_ids USING (subject_id)
                   WHERE code <> '{schema.BIRTH_CODE}'),
        x AS (SELECT * FROM e UNION ALL SELECT e.subject_id, e.time, p.parent, e.numeric_value FROM e JOIN parents p USING (code))
        SELECT code, bool_or(numeric_value IS NOT NULL AND NOT isnan(numeric_value)), bool_and(time IS NULL)
        FROM x GROUP BY code HAVING count(DISTINCT subject_id) >= {threshold} ORDER BY code""").fetchall()
    con.close()
    return [r[0] for r in rows], {r[0] for r in rows if r[1]}, {r[0] for r in rows if r[2]}, parents


@pytest.mark.parametrize("split_subject", [False, True])
@pytest.mark.parametrize("kw", [{}, {"rollup_icd10": False, "parent_codes": False}, {"min_code_subjects": 5, "min_code_frequency": 0.2}])
def test_vocabulary_matches_its_sql_definition(tmp_path, monkeypatch, kw, split_subject):
    monkeypatch.setattr(fz, "EVENT_BATCH_ROWS", 37)  # many read batches, several row groups per shard
    write(tmp_path / "events", "0", random_events(1, range(1, 30)), row_group_size=50)
    second = random_events(2, range(30, 60))
    if split_subject:  # a subject with events in both shards: counted once, through the slower exact path
        second = pd.concat([second, pd.DataFrame([(3, T, "RARE//1", np.nan), (3, T, "LAB//X", 1.0)], columns=second.columns)])
    write(tmp_path / "events", "1", second, row_group_size=64)
    train = np.arange(1, 60)[np.arange(1, 60) % 5 != 0]
    config = FeatureConfig(**{"min_code_subjects": 1, **kw})
    got = choose_vocabulary(tmp_path / "events", train, config, PARENTS)
    codes, numeric, static, parents = sql_vocabulary(tmp_path / "events", train, config, PARENTS)
    assert got.codes == codes and got.numeric == numeric and got.static == static and got.parents == parents
    assert len(codes) > 5


def test_matrix_does_not_depend_on_batches_row_groups_or_unlabelled_events(tmp_path, monkeypatch):
    first, second = random_events(3, range(1, 40)), random_events(4, range(40, 80))
    labelled = [s for s in range(1, 80) if s % 3 != 1]
    labels = label_table([(s, T - timedelta(days=k * 200), k % 2 == 0) for s in labelled for k in range(2)] + [(999, T, False)])
    splits = pd.DataFrame({"subject_id": [*labelled, 999], "split": ["train" if s % 4 else "held_out" for s in [*labelled, 999]]})
    config = FeatureConfig(windows=["7d", "365d", "full"], aggs=[*fz.CODE_AGGS, *fz.VALUE_AGGS, *fz.STATIC_AGGS], min_code_subjects=2)
    write(tmp_path / "plain", "0", first)
    write(tmp_path / "plain", "1", second)
    plain = featurize(tmp_path / "plain", labels, splits, tmp_path / "out-plain", config, codes_path=None).load()
    # Shards cut into row groups (a code dictionary each), read a few rows at a time, one of them
    # unsorted, computed a subject or three at a time: the same matrix, byte for byte.
    monkeypatch.setattr(fz, "EVENT_BATCH_ROWS", 29)
    write(tmp_path / "cut", "0", first, row_group_size=41)
    write(tmp_path / "cut", "1", second.sample(frac=1.0, random_state=0), row_group_size=53)
    for batch in (1, 3, 1000):
        other = featurize(tmp_path / "cut", labels, splits, tmp_path / f"out-{batch}",
                          config.model_copy(update={"batch_subjects": batch})).load()
        assert plain[0].shape == other[0].shape and plain[0].nnz == other[0].nnz > 500
        for name in ("data", "indices", "indptr"):
            assert np.array_equal(getattr(plain[0], name), getattr(other[0], name)), (batch, name)
        assert plain[1].equals(other[1]) and plain[2].equals(other[2])
    assert plain[1][schema.SUBJECT_ID].iloc[-1] == 999 and plain[0][-1].nnz == 0  # labels without events keep their row


def test_featurize_gives_the_arrow_memory_pool_back(tmp_path):
    write(tmp_path / "events", "0", random_events(5, range(1, 5)))
    before = pa.default_memory_pool().backend_name
    featurize(tmp_path / "events", label_table([(1, T, True)]), pd.DataFrame({"subject_id": [1], "split": ["train"]}),
              tmp_path / "out", FeatureConfig(min_code_subjects=1))
    assert pa.default_memory_pool().backend_name == before
    assert FeatureConfig().batch_subjects == 500
