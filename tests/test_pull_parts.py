"""A source pulled in parts (by subject, as ``executor.pull_parts`` does on a cluster) and
merged gives the same events, counts and quality summary as one pull: every source row
is read by exactly one part, and ``read = kept + quarantined`` still holds."""

from __future__ import annotations

import json
import re

import duckdb
import pandas as pd
import pytest
from crossformat import copy_to_postgres, write_meds, write_omop_duckdb
from test_fhir import BAD_QUARANTINE, bad_export
from test_omop_pull import make_omop

from forewarn.records import deid, schema
from forewarn.records.pull import PullFailed, check_part, merge_parts, part_predicate
from forewarn.records.sources import pull_source

KEY = deid.DeidConfig(b"golden-test-secret-0123456789", max_shift_days=365)
NOW = pd.Timestamp("2025-01-01").to_pydatetime()
PART_LABEL = re.compile(r" \(part \d+ of \d+\)$")


def pull(fmt, location, out, **kwargs):
    return pull_source(fmt, location, out, site="golden", config=KEY, now=NOW, **{"max_bad_fraction": 1.0, **kwargs})


def pull_in_parts(fmt, location, tmp_path, n, **kwargs):
    parts = [pull(fmt, location, tmp_path / f"part{k}", part=(k, n), **kwargs) for k in range(n)]
    return merge_parts(parts, tmp_path / "merged", site="golden", max_bad_fraction=1.0)


def events(result) -> pd.DataFrame:
    frame = pd.concat([pd.read_parquet(p) for p in sorted(result.events_dir.glob("*.parquet"))])
    return frame.sort_values(["subject_id", "time", "code", "numeric_value"], na_position="first").reset_index(drop=True)


def tables(result) -> dict:
    return json.loads(result.report_path.read_text())["tables"]


def quarantine(result) -> set[tuple[str, str, str]]:
    q = pd.read_parquet(result.out_dir / schema.QUARANTINE_DIR / "records.parquet")
    return {(t, PART_LABEL.sub("", loc), r) for t, loc, r in zip(q["src_table"], q["location"], q["reason"], strict=True)}


def test_part_predicate_sends_every_id_to_one_part():
    con = duckdb.connect()
    ids = ["-3", "-2", "-1", "0", "1", "2", "3", None, "x"]
    con.execute("CREATE TABLE t (id VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?)", [(i,) for i in ids])
    got = {k: sorted(r[0] or "NULL" for r in con.execute(f"SELECT id FROM t WHERE {part_predicate('id', (k, 3))}").fetchall())
           for k in range(3)}
    # id mod 3, made non-negative; a missing or non-integer id goes to part 0
    assert got == {0: ["-3", "0", "3", "NULL", "x"], 1: ["-2", "1"], 2: ["-1", "2"]}
    strings = [con.execute(f"SELECT count(*) FROM t WHERE {part_predicate('id', (k, 3), integer=False)}").fetchone()[0]
               for k in range(3)]
    assert sum(strings) == len(ids)
    assert part_predicate("id", None) == part_predicate("id", (0, 1)) == "TRUE"
    with pytest.raises(ValueError, match=r"0 <= index < count; got \(3, 3\)"):
        check_part((3, 3))


def test_omop_in_parts_reconciles_like_one_pull(tmp_path):
    db = make_omop(tmp_path / "omop.duckdb")
    whole = pull("omop", db, tmp_path / "whole")
    merged = pull_in_parts("omop", db, tmp_path, 2)
    pd.testing.assert_frame_equal(events(merged), events(whole))
    assert tables(merged) == tables(whole)
    assert tables(merged)["measurement"] == {"read": 4, "kept": 1, "quarantined": 3, "reasons": {
        "date: after the person's death; correct the date or the death date": 1,
        "date: before the person's birth; correct the date or the birth date": 1,
        "date: in the future (after the pull); correct the date": 1}}
    a, b = (json.loads(r.report_path.read_text()) for r in (whole, merged))
    assert (b["subjects"], b["events"], b["read"], b["quarantined"], b["ages_capped_at_90"], b["parts"]) == (2, 16, 17, 5, 1, 2)
    assert {k: v for k, v in b.items() if k not in ("shards", "parts")} == {k: v for k, v in a.items() if k != "shards"}
    assert json.loads(merged.quality_path.read_text()) == json.loads(whole.quality_path.read_text())
    assert pd.read_parquet(merged.codes_path).equals(pd.read_parquet(whole.codes_path))
    # Positions are counted within a part, and the location says which part read the row.
    locations = sorted(pd.read_parquet(merged.out_dir / "quarantine" / "records.parquet")["location"])
    # part 1 holds person 2 (2 mod 2 = 0), part 2 person 1
    assert locations == ["condition_occurrence row 1 (part 1 of 2)", "condition_occurrence row 3 (part 2 of 2)",
                         "measurement row 1 (part 1 of 2)", "measurement row 2 (part 2 of 2)",
                         "measurement row 3 (part 2 of 2)"]
    assert sorted(p.name for p in merged.events_dir.iterdir()) == ["0-0.parquet", "1-0.parquet"]


def test_the_bad_record_gate_judges_the_merged_source(tmp_path):
    db = make_omop(tmp_path / "omop.duckdb")
    # person 2's part alone has 1 bad measurement of 1 and person 1's 2 of 3: each part
    # passes (the gate is left to the merge), the whole source does not.
    parts = [pull("omop", db, tmp_path / f"part{k}", part=(k, 2), max_bad_fraction=0.5) for k in range(2)]
    with pytest.raises(PullFailed, match=r"measurement: 3 of 4 \(date: after the person's death.*raise max_bad_fraction"):
        merge_parts(parts, tmp_path / "merged", site="golden", max_bad_fraction=0.5)
    assert not (tmp_path / "merged").exists()
    assert not list(tmp_path.glob("merged.partial-*"))
    with pytest.raises(ValueError, match=r"every part of one split exactly once; got parts \[0\] of \[2\]"):
        merge_parts(parts[:1], tmp_path / "merged", site="golden")


def test_fhir_in_parts_keeps_every_quarantined_record_once(tmp_path):
    src = bad_export(tmp_path / "src")
    whole = pull("fhir", src, tmp_path / "whole")
    merged = pull_in_parts("fhir", src, tmp_path, 3)
    assert quarantine(merged) == quarantine(whole) == BAD_QUARANTINE
    assert len(pd.read_parquet(merged.out_dir / "quarantine" / "records.parquet")) == len(
        pd.read_parquet(whole.out_dir / "quarantine" / "records.parquet"))
    assert tables(merged) == tables(whole)
    pd.testing.assert_frame_equal(events(merged), events(whole))


def test_meds_in_parts_equals_one_pull(tmp_path):
    root = write_meds(tmp_path / "m")
    whole = pull("meds", root, tmp_path / "whole")
    merged = pull_in_parts("meds", root, tmp_path, 2)
    pd.testing.assert_frame_equal(events(merged), events(whole))
    assert tables(merged) == tables(whole) == {
        "data": {"read": 12, "kept": 12, "quarantined": 0, "reasons": {}},
        "person": {"read": 3, "kept": 3, "quarantined": 0, "reasons": {}},
        "static": {"read": 7, "kept": 7, "quarantined": 0, "reasons": {}},  # gender, 2 races, 2 ethnicities
    }


def test_postgresql_parts_are_filtered_by_the_server(tmp_path, pg_schema):
    engine, db_schema = pg_schema
    source = write_omop_duckdb(tmp_path / "src.duckdb")
    url = copy_to_postgres(source, engine, db_schema)
    whole = pull("omop", source, tmp_path / "whole")
    merged = pull_in_parts("omop", url, tmp_path, 2, db_schema=db_schema)
    pd.testing.assert_frame_equal(events(merged), events(whole))
    assert {k: (v["read"], v["kept"]) for k, v in tables(merged).items()} == {
        k: (v["read"], v["kept"]) for k, v in tables(whole).items()}
    first = json.loads((tmp_path / "part0" / "pull_report.json").read_text())
    assert first["part"] == [0, 2] and 0 < first["subjects"] < 3  # the server sent one part's people
