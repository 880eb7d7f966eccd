"""A MEDS 0.4 dataset (``data/``, ``metadata/codes.parquet``,
``metadata/subject_splits.parquet``) into de-identified MEDS events.

MEDS data may already be de-identified elsewhere; it passes the same boundary all the
same: subject ids are re-keyed with the site's secret, times shift, ages over 89
collapse, and ``text_value`` (free text) is dropped. Every shard's schema is checked
with the ``meds`` package before anything is read.

Accounting: each subject's first ``MEDS_BIRTH`` row is the subject's "person" row (the
core writes the birth event from it); a second birth row is quarantined; timed rows
are table ``data`` and static rows (null time) table ``static``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import meds
import pyarrow.parquet as pq

from forewarn.records import deid, schema
from forewarn.records.pull import PullContext, PullResult, part_predicate, run_pull


def data_files(root: Path) -> list[Path]:
    """The dataset's data shards (``data/**/*.parquet``), after checking the layout."""
    root = Path(root)
    if not (root / meds.data_subdirectory).is_dir():
        raise FileNotFoundError(
            f"{root} is not a MEDS dataset: it has no {meds.data_subdirectory}/ folder. "
            "Pass the dataset's root (the folder holding data/ and metadata/)."
        )
    files = sorted((root / meds.data_subdirectory).rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{root / meds.data_subdirectory} holds no .parquet shards.")
    return files


def validate_schemas(files: list[Path], root: Path) -> None:
    """Check every shard's schema with ``meds.DataSchema``; one error lists every bad file."""
    problems = []
    for path in files:
        try:
            empty = pq.read_schema(path).empty_table()
        except Exception as exc:  # a truncated or non-Parquet file
            problems.append(f"{path.relative_to(root)}: cannot be read as Parquet ({exc}); re-export the shard")
            continue
        try:
            meds.DataSchema.validate(empty)
        except Exception as exc:
            problems.append(f"{path.relative_to(root)}: {exc}")
    if problems:
        listed = "\n  - ".join(problems)
        raise ValueError(
            f"MEDS shards do not match the MEDS 0.4 data schema (subject_id int64, time timestamp[us], "
            f"code string, numeric_value float32, text_value large_string):\n  - {listed}"
        )


def pull_meds(
    location: Path,
    out_dir: Path,
    *,
    site: str,
    config: deid.DeidConfig,
    now: datetime | None = None,
    shard_subjects: int = 100_000,
    max_bad_fraction: float = 0.05,
    part: tuple[int, int] | None = None,
) -> PullResult:
    """Pull a MEDS dataset rooted at ``location`` into ``out_dir`` (with ``part``, the
    subjects of that part only)."""
    root = Path(location)
    files = data_files(root)
    validate_schemas(files, root)

    def load(ctx: PullContext) -> None:
        ctx.source = {"format": "meds", "engine": "parquet", "shards": str(len(files))}
        load_meds(ctx, root, files)

    return run_pull(f"pull {site} (meds)", Path(out_dir), load, site=site, config=config, now=now,
                    shard_subjects=shard_subjects, max_bad_fraction=max_bad_fraction, part=part)


def load_meds(ctx: PullContext, root: Path, files: list[Path]) -> None:
    con = ctx.con
    listing = ", ".join(f"'{p}'" for p in files)
    has_unit = all(schema.UNIT in pq.read_schema(p).names for p in files)
    unit = f"CAST({schema.UNIT} AS VARCHAR)" if has_unit else "NULL"
    prefix = str(root) + "/"
    con.execute(
        f"""
        CREATE TEMP VIEW src_rows AS
        SELECT CAST(subject_id AS VARCHAR) AS source_id, CAST(time AS TIMESTAMP) AS time, code,
               CASE WHEN isnan(numeric_value) THEN NULL ELSE CAST(numeric_value AS DOUBLE) END AS numeric_value,
               {unit} AS unit,
               replace(filename, '{prefix}', '') || ':row ' || CAST(file_row_number + 1 AS VARCHAR) AS src_row
        FROM read_parquet([{listing}], filename = true, file_row_number = true)
        WHERE {part_predicate("subject_id", ctx.part)}
        """
    )
    ctx.part_applied = True
    con.execute(
        f"""
        CREATE TEMP TABLE births AS
        SELECT source_id, time, src_row,
               row_number() OVER (PARTITION BY source_id ORDER BY time NULLS LAST, src_row) AS nth
        FROM src_rows WHERE code = '{schema.BIRTH_CODE}';
        INSERT INTO raw_persons
        SELECT s.source_id, b.time, d.death, b.src_row
        FROM (SELECT DISTINCT source_id FROM src_rows) s
        LEFT JOIN births b ON b.source_id = s.source_id AND b.nth = 1
        LEFT JOIN (SELECT source_id, min(time) AS death FROM src_rows WHERE code = '{schema.DEATH_CODE}' GROUP BY 1) d
          ON d.source_id = s.source_id;
        INSERT INTO raw_events
        SELECT 'person', src_row, NULL, source_id, time, '{schema.BIRTH_CODE}', NULL, NULL,
               'MEDS_BIRTH: a second birth event for the subject; keep one'
        FROM births WHERE nth > 1;
        INSERT INTO raw_events
        SELECT CASE WHEN time IS NULL THEN 'static' ELSE 'data' END, src_row, NULL, source_id, time, code,
               numeric_value, unit, NULL
        FROM src_rows WHERE code <> '{schema.BIRTH_CODE}';
        """
    )
    codes = root / meds.code_metadata_filepath
    if codes.is_file():
        con.execute(
            f"INSERT INTO code_descriptions SELECT code, description FROM read_parquet('{codes}') WHERE description IS NOT NULL"
        )
        has_parents = con.execute(f"SELECT count(*) FROM (DESCRIBE SELECT * FROM read_parquet('{codes}')) WHERE column_name = 'parent_codes'").fetchone()[0]
        if has_parents:  # the dataset's own ontology links travel into the pull's metadata
            con.execute(
                f"INSERT INTO code_parents SELECT code, unnest(parent_codes) FROM read_parquet('{codes}') WHERE len(parent_codes) > 0"
            )
