"""The source-independent half of every pull: check, de-identify, write, reconcile, gate.

A connector (``records.omop``, ``records.meds_source``, ``records.fhir``) loads what it
read into a working DuckDB database as three tables, and nothing else:

``raw_persons(source_id VARCHAR, birth TIMESTAMP, death TIMESTAMP, src_row VARCHAR)``
    one row per source person (duplicates are quarantined here); the core writes the
    birth event, while ``death`` only serves the date checks (the connector writes the
    ``MEDS_DEATH`` event from its own death record); a null ``src_row`` marks a person
    derived from events rather than read from a row of its own (not counted as read);
``raw_events(src_table VARCHAR, src_row VARCHAR, src_key VARCHAR, source_id VARCHAR,
time TIMESTAMP, code VARCHAR, numeric_value DOUBLE, unit VARCHAR, reason VARCHAR)``
    one row per event; ``src_row`` identifies the physical source row (a row may give
    several events, e.g. an observation period's start and end), ``src_key`` its
    primary key or resource id (a repeated key is a duplicate), ``reason`` a problem
    the connector already found (unknown code, wrong type); null ``time`` only for
    static codes;
``raw_rejects(src_table VARCHAR, src_row VARCHAR, reason VARCHAR)``
    source rows that could not be read at all (a malformed JSON line, a truncated
    file), by location only — never their content.

``finish_pull`` then quarantines events with no date, dates before birth, after
death or in the future, duplicates, and events of unknown persons; replaces source
ids by keyed-hash pseudonyms and shifts every time by the subject's offset; moves
the birth of subjects over 89 so they are 90 at their last event; writes sharded
MEDS events, codes metadata, a quarantine and a pull report that reconciles
``read = kept + quarantined`` per table; and runs the PHI scan gate over everything
it wrote before publishing the folder with an atomic rename.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from forewarn.records import deid, privacy, schema
from forewarn.records.progress import stage

RAW_DDL = """
CREATE TABLE raw_persons (source_id VARCHAR, birth TIMESTAMP, death TIMESTAMP, src_row VARCHAR);
CREATE TABLE raw_events (src_table VARCHAR, src_row VARCHAR, src_key VARCHAR, source_id VARCHAR, time TIMESTAMP,
                         code VARCHAR, numeric_value DOUBLE, unit VARCHAR, reason VARCHAR);
CREATE TABLE raw_rejects (src_table VARCHAR, src_row VARCHAR, reason VARCHAR);
CREATE TABLE code_descriptions (code VARCHAR, description VARCHAR);
CREATE TABLE code_parents (code VARCHAR, parent VARCHAR);
"""

RESERVED_DESCRIPTIONS = {
    schema.BIRTH_CODE: "Birth",
    schema.DEATH_CODE: "Death",
    schema.OBSERVATION_START: "Start of an observation period",
    schema.OBSERVATION_END: "End of an observation period",
}

# Plausibility bounds for the data-quality summary: (low, high) in the code's usual unit.
PLAUSIBLE = {
    "LOINC//4548-4": (3.0, 20.0),  # HbA1c %
    "LOINC//1558-6": (20.0, 1000.0),  # fasting glucose mg/dL
    "LOINC//39156-5": (10.0, 100.0),  # BMI
    "LOINC//29463-7": (1.0, 400.0),  # body weight kg
    "LOINC//62238-1": (1.0, 200.0),  # eGFR
    "LOINC//33914-3": (1.0, 200.0),  # eGFR (MDRD)
    "LOINC//2160-0": (0.1, 25.0),  # creatinine mg/dL
    "LOINC//8480-6": (50.0, 300.0),  # systolic BP
    "LOINC//8462-4": (20.0, 200.0),  # diastolic BP
    "LOINC//8867-4": (20.0, 250.0),  # heart rate
    "LOINC//2093-3": (50.0, 600.0),  # total cholesterol
}


class PullFailed(RuntimeError):
    """The pull read too many bad records, or its input was unreadable."""


@dataclass(frozen=True)
class PullResult:
    """Where a pull wrote its output, and its headline counts."""

    site: str
    out_dir: Path
    events_dir: Path
    codes_path: Path
    report_path: Path
    quality_path: Path
    subjects: int
    events: int
    read: int
    quarantined: int


Part = tuple[int, int]  # (index, count): this pull reads the subjects of part ``index`` of ``count``


def check_part(part: Part | None) -> Part | None:
    if part is None:
        return None
    index, count = part
    if not (isinstance(index, int) and isinstance(count, int) and count >= 1 and 0 <= index < count):
        raise ValueError(f"part must be (index, count) with 0 <= index < count; got {part!r}.")
    return (index, count)


def part_predicate(column: str, part: Part | None, *, integer: bool = True) -> str:
    """SQL (DuckDB and PostgreSQL) that is true for the rows of ``part``.

    Integer ids (OMOP ``person_id``, MEDS ``subject_id``) go to part ``id mod count``
    (non-negative for negative ids); other ids to ``hash(id) mod count`` (DuckDB's
    hash). Rows whose id is missing or not an integer go to part 0, where the core
    quarantines them, so every source row is read by exactly one part.
    """
    if part is None or part[1] == 1:
        return "TRUE"
    index, count = part
    if integer:
        value = f"TRY_CAST({column} AS BIGINT)"
        return f"COALESCE((({value} % {count}) + {count}) % {count}, 0) = {index}"
    return f"COALESCE(hash({column}) % {count}, 0) = {index}"


@dataclass
class PullContext:
    """A working database for one pull, plus what the connector tells the core.

    With ``part`` set, the pull reads one part of the source's subjects. A connector
    that filters its reads itself (pushing ``part_predicate`` into its queries) sets
    ``part_applied``; otherwise the core drops the other parts' rows after loading.
    """

    con: duckdb.DuckDBPyConnection
    workdir: Path
    identifiers: set[str] = field(default_factory=set)
    source: dict[str, str] = field(default_factory=dict)
    read_counts: dict[str, int] = field(default_factory=dict)  # physical rows per source table, when known
    part: Part | None = None
    part_applied: bool = False


def open_context(out_dir: Path, *, memory_limit: str = "2GB") -> PullContext:
    """A fresh working DuckDB file beside ``out_dir`` that spills to disk past ``memory_limit``."""
    tmp = Path(out_dir).with_name(Path(out_dir).name + f".partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    con = duckdb.connect(str(tmp / "work.duckdb"))
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET temp_directory = '{tmp / 'spill'}'")
    con.execute("SET preserve_insertion_order = false")
    con.execute(RAW_DDL)
    return PullContext(con, tmp)


def run_pull(
    name: str,
    out_dir: Path,
    load: Callable[[PullContext], dict | None],
    *,
    site: str,
    config: deid.DeidConfig,
    now: datetime | None = None,
    shard_subjects: int = 100_000,
    max_bad_fraction: float = 0.05,
    part: Part | None = None,
) -> PullResult:
    """The frame of every connector: a progress stage, a working context that ``load``
    fills (returning extra report fields, or None), then ``finish_pull``; the working
    files are removed whatever happens.

    With ``part=(index, count)`` only that part of the subjects is pulled, and the
    bad-record gate is left to ``merge_parts``, which judges the whole source."""
    out_dir, part = Path(out_dir), check_part(part)
    if part is not None and part[1] > 1:
        name = f"{name} part {part[0] + 1} of {part[1]}"
    with stage(name) as counts:
        ctx = open_context(out_dir)
        ctx.part = part
        try:
            extra = load(ctx)
            if part is not None and part[1] > 1:
                _keep_part(ctx)
        except BaseException:
            ctx.con.close()
            shutil.rmtree(ctx.workdir, ignore_errors=True)
            raise
        result = finish_pull(ctx, out_dir, site=site, config=config, now=now, shard_subjects=shard_subjects,
                             max_bad_fraction=max_bad_fraction if part is None else None,
                             extra_report=(extra or {}) | ({"part": list(part)} if part else {}))
        counts.update(subjects=result.subjects, events=result.events, read=result.read, quarantined=result.quarantined)
    return result


def _keep_part(ctx: PullContext) -> None:
    """Drop the rows of other parts (unless the connector read only its part), and say
    in every row location which part read it: positions are counted within a part."""
    con, (index, count) = ctx.con, ctx.part
    if not ctx.part_applied:
        keep = part_predicate("source_id", ctx.part, integer=False)
        con.execute(f"DELETE FROM raw_persons WHERE NOT ({keep})")
        con.execute(f"DELETE FROM raw_events WHERE NOT ({keep})")
        if index != 0:
            con.execute("DELETE FROM raw_rejects")
    label = f" (part {index + 1} of {count})"
    for table in ("raw_persons", "raw_events", "raw_rejects"):
        con.execute(f"UPDATE {table} SET src_row = src_row || '{label}' WHERE src_row IS NOT NULL")


def append(ctx: PullContext, table: str, batch: pa.Table) -> None:
    """Append an Arrow batch to one of the raw tables (columns by name)."""
    if batch.num_rows == 0:
        return
    name = f"_batch_{uuid.uuid4().hex[:8]}"
    ctx.con.register(name, batch)
    cols = ", ".join(batch.column_names)
    ctx.con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {name}")
    ctx.con.unregister(name)


def finish_pull(
    ctx: PullContext,
    out_dir: Path,
    *,
    site: str,
    config: deid.DeidConfig,
    now: datetime | None = None,
    shard_subjects: int = 100_000,
    max_bad_fraction: float | None = 0.05,
    extra_report: dict | None = None,
) -> PullResult:
    """Check, de-identify and write what the connector loaded; see the module docstring.
    ``max_bad_fraction=None`` leaves the bad-record gate to the caller (``merge_parts``)."""
    con, tmp, out_dir = ctx.con, ctx.workdir, Path(out_dir)
    now = now or datetime.now()
    try:
        result = _finish(ctx, out_dir, site, config, now, shard_subjects, max_bad_fraction, extra_report or {})
    except BaseException:
        con.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _finish(ctx, out_dir, site, config, now, shard_subjects, max_bad_fraction, extra_report) -> PullResult:
    con, tmp = ctx.con, ctx.workdir
    # Persons: the first row of each source id wins; later ones are duplicates.
    con.execute(
        """
        CREATE TABLE persons AS
        SELECT source_id, birth, death, src_row,
               row_number() OVER (PARTITION BY source_id ORDER BY src_row) > 1 AS duplicate
        FROM raw_persons
        """
    )
    source_ids = [r[0] for r in con.execute("SELECT source_id FROM persons WHERE NOT duplicate ORDER BY source_id").fetchall()]
    subject_ids, shifts = deid.pseudonymize(source_ids, config)
    con.register(
        "_pseudo", pa.table({"source_id": pa.array(source_ids, pa.string()), "subject_id": subject_ids, "shift_days": shifts})
    )
    con.execute("CREATE TABLE pseudo AS SELECT * FROM _pseudo")
    con.unregister("_pseudo")

    # Birth becomes an event of the person row.
    con.execute(
        f"""
        INSERT INTO raw_events
        SELECT 'person', src_row, NULL, source_id, birth, '{schema.BIRTH_CODE}', NULL, NULL,
               CASE WHEN duplicate THEN 'person id: repeats an earlier person; remove the repeat' END
        FROM persons WHERE birth IS NOT NULL OR duplicate;
        """
    )
    now_lit = now.strftime("%Y-%m-%d %H:%M:%S")
    con.execute(
        f"""
        CREATE TABLE checked AS
        WITH e AS (
          SELECT *, row_number() OVER (PARTITION BY src_table, src_key, code ORDER BY time, numeric_value, src_row) AS nth
          FROM raw_events)
        SELECT e.src_table, e.src_row, p.subject_id, p.shift_days, e.time, e.code, e.numeric_value, e.unit,
               COALESCE(e.reason, CASE
                 WHEN p.subject_id IS NULL THEN 'person: no such person in the person/patient table; add the person or drop the row'
                 WHEN e.code IS NULL OR e.code = '' THEN 'code: missing; map the concept or drop the row'
                 WHEN e.src_key IS NOT NULL AND e.nth > 1 THEN e.src_table || ' id: repeats an earlier row''s id; remove the repeat'
                 WHEN e.time IS NULL AND e.src_table NOT IN ('person', 'static') THEN 'date: missing; every clinical row needs a date'
                 WHEN e.time > TIMESTAMP '{now_lit}' THEN 'date: in the future (after the pull); correct the date'
                 WHEN e.time IS NOT NULL AND e.code <> '{schema.BIRTH_CODE}' AND per.birth IS NOT NULL
                      AND CAST(e.time AS DATE) < CAST(per.birth AS DATE) THEN 'date: before the person''s birth; correct the date or the birth date'
                 WHEN e.time IS NOT NULL AND per.death IS NOT NULL AND CAST(e.time AS DATE) > CAST(per.death AS DATE)
                      AND e.src_table NOT IN ('person', 'death', 'observation_period') THEN 'date: after the person''s death; correct the date or the death date'
               END) AS reason
        FROM e
        LEFT JOIN pseudo p USING (source_id)
        LEFT JOIN (SELECT source_id, birth, death FROM persons WHERE NOT duplicate) per USING (source_id)
        """
    )
    # Ages over 89 collapse to 90: birth moves to 90 years before the last kept event.
    con.execute(
        f"""
        CREATE TABLE kept AS
        WITH k AS (SELECT * FROM checked WHERE reason IS NULL),
        last AS (SELECT subject_id, max(time) AS last_time FROM k GROUP BY subject_id)
        SELECT k.subject_id,
               CASE WHEN k.code = '{schema.BIRTH_CODE}' AND k.time < l.last_time - INTERVAL 90 YEAR
                    THEN l.last_time - INTERVAL 90 YEAR ELSE k.time END
                 + k.shift_days * INTERVAL 1 DAY AS time,
               k.code, CAST(k.numeric_value AS FLOAT) AS numeric_value, CAST(NULL AS VARCHAR) AS text_value,
               k.unit, k.src_table,
               (k.code = '{schema.BIRTH_CODE}' AND k.time < l.last_time - INTERVAL 90 YEAR) AS age_capped
        FROM k JOIN last l USING (subject_id)
        """
    )
    for sub in (schema.EVENTS_DIR, "metadata", schema.QUARANTINE_DIR):
        (tmp / "out" / sub).mkdir(parents=True, exist_ok=True)
    staging = tmp / "out"

    n_subjects = len(source_ids)
    n_shards = max(1, -(-n_subjects // shard_subjects))
    events = 0
    for shard in range(n_shards):
        table = con.sql(
            "SELECT subject_id, time, code, numeric_value, text_value, unit FROM kept "
            f"WHERE subject_id % {n_shards} = {shard} "
            "ORDER BY subject_id, time NULLS FIRST, code, numeric_value, unit"
        ).to_arrow_table()
        table = schema.align(table, schema.DATA_SCHEMA, what=f"events shard {shard}")
        pq.write_table(table, staging / schema.EVENTS_DIR / f"{shard}.parquet")
        events += table.num_rows

    quarantine = con.sql(
        """
        SELECT src_table, src_row AS location, subject_id, time + shift_days * INTERVAL 1 DAY AS time, code,
               CAST(numeric_value AS FLOAT) AS numeric_value, reason
        FROM checked WHERE reason IS NOT NULL
        UNION ALL
        SELECT src_table, src_row, NULL, NULL, NULL, NULL, reason FROM raw_rejects
        ORDER BY src_table, location, code
        """
    ).to_arrow_table()
    pq.write_table(quarantine, staging / schema.QUARANTINE_DIR / "records.parquet")

    _write_codes(con, staging / schema.CODES_FILE)
    per_table = _reconcile(con, ctx.read_counts)
    read = sum(t["read"] for t in per_table.values())
    quarantined = sum(t["quarantined"] for t in per_table.values())
    span = con.execute(
        f"SELECT min(time), max(time) FROM kept WHERE time IS NOT NULL AND code <> '{schema.BIRTH_CODE}'"
    ).fetchone()
    report = {
        "site": site,
        "source": ctx.source,
        "subjects": n_subjects,
        "events": events,
        "read": read,
        "quarantined": quarantined,
        "shards": n_shards,
        "ages_capped_at_90": con.execute("SELECT count(*) FROM kept WHERE age_capped").fetchone()[0],
        "time_span": [span[0].date().isoformat() if span[0] else None, span[1].date().isoformat() if span[1] else None],
        "tables": per_table,
        "deid": {"pseudonyms": "HMAC-SHA256", "max_shift_days": config.max_shift_days},
        **extra_report,
    }
    (staging / schema.PULL_REPORT).write_text(json.dumps(report, indent=2, default=str))
    (staging / QUALITY_FILE).write_text(json.dumps(quality_summary(con, report), indent=2, default=str))
    con.close()

    try:
        _gate_bad_fraction(per_table, site, max_bad_fraction)
    except PullFailed:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    problems = scan_output(staging, ctx.identifiers)
    if problems:
        shutil.rmtree(tmp, ignore_errors=True)
    deid.gate(problems, site=site)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    return PullResult(
        site=site, out_dir=out_dir, events_dir=out_dir / schema.EVENTS_DIR, codes_path=out_dir / schema.CODES_FILE,
        report_path=out_dir / schema.PULL_REPORT, quality_path=out_dir / QUALITY_FILE,
        subjects=n_subjects, events=events, read=read, quarantined=quarantined,
    )


QUALITY_FILE = "quality.json"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _gate_bad_fraction(per_table: dict[str, dict], site: str, max_bad_fraction: float | None) -> None:
    if max_bad_fraction is None:
        return
    bad = {name: t for name, t in per_table.items() if t["read"] and t["quarantined"] / t["read"] > max_bad_fraction}
    if bad:
        detail = "; ".join(
            f"{name}: {t['quarantined']:,} of {t['read']:,} ({', '.join(f'{r} {n:,}' for r, n in t['reasons'].items())})"
            for name, t in bad.items()
        )
        raise PullFailed(
            f"site {site!r}: more than {max_bad_fraction:.0%} of the records of some tables were rejected: {detail}. "
            "Fix the source (see the reasons), or raise max_bad_fraction if this is expected."
        )


def merge_parts(parts: list[PullResult], out_dir: Path, *, site: str, max_bad_fraction: float = 0.05) -> PullResult:
    """One pull folder from the pulls of every part of a source (``run_pull(part=...)``).

    Event shards are linked in (hard links; copied across filesystems) as
    ``<part>-<shard>.parquet`` (subjects never span parts);
    the quarantines are concatenated, the code lists united, the per-table counts and
    reasons summed (``read = kept + quarantined`` still holds), the quality summary is
    computed again over all events (small counts are suppressed after summing, not per
    part), and the bad-record gate judges the whole source. The part folders are left
    as they are; ``out_dir`` appears at once, complete, or not at all.
    """
    out_dir = Path(out_dir)
    if not parts:
        raise ValueError("merge_parts needs at least one part.")
    reports = [json.loads(p.report_path.read_text()) for p in parts]
    indices = [r.get("part", [0, 1])[0] for r in reports]
    counts = {r.get("part", [0, 1])[1] for r in reports}
    if len(counts) != 1 or sorted(indices) != list(range(next(iter(counts)))):
        raise ValueError(f"merge_parts needs every part of one split exactly once; got parts {sorted(indices)} of {sorted(counts)}.")
    with stage(f"merge {site} ({len(parts)} parts)") as progress:
        tmp = out_dir.with_name(out_dir.name + f".partial-{uuid.uuid4().hex[:8]}")
        staging = tmp / "out"
        for sub in (schema.EVENTS_DIR, "metadata", schema.QUARANTINE_DIR):
            (staging / sub).mkdir(parents=True, exist_ok=True)
        try:
            for index, part in sorted(zip(indices, parts, strict=True)):
                for shard in sorted(part.events_dir.glob("*.parquet")):
                    _link_or_copy(shard, staging / schema.EVENTS_DIR / f"{index}-{shard.name}")
            quarantines = [pq.read_table(p.out_dir / schema.QUARANTINE_DIR / "records.parquet") for _, p in sorted(zip(indices, parts, strict=True))]
            pq.write_table(pa.concat_tables(quarantines), staging / schema.QUARANTINE_DIR / "records.parquet")
            con = duckdb.connect()
            con.execute("SET preserve_insertion_order = false")
            listing = ", ".join(f"'{p.codes_path}'" for p in parts)
            codes = con.sql(
                f"SELECT code, min(description) AS description, list_sort(list_distinct(flatten(list(parent_codes)))) AS parents "
                f"FROM read_parquet([{listing}]) GROUP BY code ORDER BY code"
            ).to_arrow_table()
            table = pa.table({schema.CODE: codes.column("code").cast(pa.string()), "description": codes.column("description").cast(pa.string()),
                              "parent_codes": pa.array([list(p or []) for p in codes.column("parents").to_pylist()], pa.list_(pa.string()))})
            pq.write_table(schema.align(table, schema.CODES_SCHEMA, what="codes"), staging / schema.CODES_FILE)
            tables: dict[str, dict] = {}
            for r in reports:
                for name, t in r["tables"].items():
                    into = tables.setdefault(name, {"read": 0, "kept": 0, "quarantined": 0, "reasons": {}})
                    for k in ("read", "kept", "quarantined"):
                        into[k] += t[k]
                    for reason, n in t["reasons"].items():
                        into["reasons"][reason] = into["reasons"].get(reason, 0) + n
            tables = {name: t | {"reasons": dict(sorted(t["reasons"].items()))} for name, t in sorted(tables.items())}
            spans = [r["time_span"] for r in reports]
            starts, ends = [s[0] for s in spans if s[0]], [s[1] for s in spans if s[1]]
            first = reports[0]
            report = {
                "site": site, "source": first["source"],
                **{k: sum(r[k] for r in reports) for k in ("subjects", "events", "read", "quarantined", "ages_capped_at_90")},
                "shards": sum(r["shards"] for r in reports),
                "time_span": [min(starts) if starts else None, max(ends) if ends else None],
                "tables": tables, "deid": first["deid"],
                **{k: v for k, v in first.items() if k not in {"site", "source", "subjects", "events", "read", "quarantined",
                                                             "ages_capped_at_90", "shards", "time_span", "tables", "deid", "part"}},
                "parts": len(parts),
            }
            con.execute(f"CREATE VIEW kept AS SELECT * FROM read_parquet('{staging / schema.EVENTS_DIR}/*.parquet')")
            (staging / schema.PULL_REPORT).write_text(json.dumps(report, indent=2, default=str))
            (staging / QUALITY_FILE).write_text(json.dumps(quality_summary(con, report), indent=2, default=str))
            con.close()
            _gate_bad_fraction(tables, site, max_bad_fraction)
            problems = scan_output(staging, set(), suffixes=(".json",))
            deid.gate(problems, site=site)
            if out_dir.exists():
                shutil.rmtree(out_dir)
            os.replace(staging, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        progress.update(subjects=report["subjects"], events=report["events"], read=report["read"],
                        quarantined=report["quarantined"])
    return PullResult(
        site=site, out_dir=out_dir, events_dir=out_dir / schema.EVENTS_DIR, codes_path=out_dir / schema.CODES_FILE,
        report_path=out_dir / schema.PULL_REPORT, quality_path=out_dir / QUALITY_FILE,
        subjects=report["subjects"], events=report["events"], read=report["read"], quarantined=report["quarantined"],
    )


def _write_codes(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    codes = con.sql(
        """
        SELECT k.code, any_value(d.description) AS description,
               (SELECT COALESCE(list_sort(list(DISTINCT p.parent)), []) FROM code_parents p WHERE p.code = k.code) AS parents
        FROM (SELECT DISTINCT code FROM kept) k LEFT JOIN code_descriptions d USING (code)
        GROUP BY k.code ORDER BY k.code
        """
    ).to_arrow_table()
    names = codes.column("code").to_pylist()
    parents = [list(p or []) for p in codes.column("parents").to_pylist()]
    descriptions = [d if d is not None else RESERVED_DESCRIPTIONS.get(c) for c, d in zip(names, codes.column("description").to_pylist(), strict=True)]
    table = pa.table(
        {
            schema.CODE: pa.array(names, pa.string()),
            "description": pa.array(descriptions, pa.string()),
            "parent_codes": pa.array(parents, pa.list_(pa.string())),
        }
    )
    pq.write_table(schema.align(table, schema.CODES_SCHEMA, what="codes"), path)


def _reconcile(con: duckdb.DuckDBPyConnection, read_counts: dict[str, int]) -> dict[str, dict]:
    """Per source table, in source rows: a row is quarantined when any event it gave was.

    Tables whose physical row count the connector measured (``read_counts``) are not
    grouped row by row (that does not fit in bounded memory at 100 M rows): only the
    few quarantined rows are.
    """
    counted = ", ".join("'" + t.replace("'", "''") + "'" for t in read_counts) or "''"
    rows = con.execute(
        f"""
        WITH r AS (
          SELECT src_table, src_row, bool_or(reason IS NOT NULL) AS bad
          FROM checked WHERE src_table NOT IN ({counted}) GROUP BY src_table, src_row
          UNION ALL SELECT 'person', src_row, false FROM persons p
            WHERE 'person' NOT IN ({counted}) AND p.src_row IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM checked c WHERE c.src_table = 'person' AND c.src_row = p.src_row))
        SELECT src_table, count(*), count(*) FILTER (WHERE bad) FROM r GROUP BY src_table
        """
    ).fetchall()
    bad_counted = dict(
        con.execute(
            f"SELECT src_table, count(DISTINCT src_row) FROM checked WHERE reason IS NOT NULL AND src_table IN ({counted}) "
            "GROUP BY src_table"
        ).fetchall()
    )
    rejects = dict(con.execute("SELECT src_table, count(*) FROM raw_rejects GROUP BY src_table").fetchall())
    reasons = con.execute(
        """
        WITH r AS (
          SELECT src_table, src_row, min(reason) AS reason FROM checked WHERE reason IS NOT NULL GROUP BY src_table, src_row
          UNION ALL SELECT src_table, src_row, reason FROM raw_rejects)
        SELECT src_table, reason, count(*) FROM r GROUP BY src_table, reason ORDER BY src_table, reason
        """
    ).fetchall()
    totals = {table: (int(read), int(bad)) for table, read, bad in rows}
    for table, read in read_counts.items():
        totals[table] = (int(read), int(bad_counted.get(table, 0)))
    out: dict[str, dict] = {}
    for table in sorted(set(totals) | set(rejects)):
        read, bad = totals.get(table, (0, 0))
        read, bad = read + rejects.get(table, 0), bad + rejects.get(table, 0)
        out[table] = {"read": read, "kept": read - bad, "quarantined": bad, "reasons": {}}
    for table, reason, n in reasons:
        out[table]["reasons"][reason] = int(n)
    return out


def table_counts(report: dict) -> tuple[dict[str, dict[str, int | None]], int | None]:
    """Per-table rows read, kept and quarantined, and the total quarantined, as they may
    leave the site.

    They add up (read = kept + quarantined per table; the total over tables), and with
    the published subjects and events they overlap, so hiding one small count alone lets
    subtraction give it back. When every kept and quarantined count is 0 or at least 11
    all are published; when any is 1..10, none of the per-table counts nor the total
    quarantined is (the reconciliation stays inside the site, in ``pull_report.json``).
    """
    tables = report["tables"]
    parts = [t[k] for t in tables.values() for k in ("kept", "quarantined")] + [report.get("quarantined", 0)]
    if all(privacy.suppress(v) is not None for v in parts):
        return {n: {k: t[k] for k in ("read", "kept", "quarantined")} for n, t in tables.items()}, report.get("quarantined")
    return {n: dict.fromkeys(("read", "kept", "quarantined")) for n in tables}, None


# A source table whose kept rows moved by this share or more since the previous pull is
# flagged: a feed that lost half its rows trains a different model without any drift in
# the features the champion knows.
PULL_CHANGE_ALERT = 0.2


def pull_changes(previous: dict, current: dict, *, alert: float = PULL_CHANGE_ALERT) -> list[dict]:
    """Per source table, the kept rows of the ``previous`` pull's report against the
    ``current`` one's, as they may leave the site: both sides as :func:`table_counts`
    publishes them, so a table is compared only where both pulls' per-table counts are
    published. Each entry: ``table``, ``previous`` and ``now`` (kept rows), ``change``
    (now / previous - 1; None when the previous pull kept none) and ``flagged`` (the
    change is ``alert`` or more either way, or the table is new or emptied)."""
    before, _ = table_counts(previous)
    now, _ = table_counts(current)
    if any(t["kept"] is None for t in [*before.values(), *now.values()]):
        return []  # one pull withholds all its per-table counts (table_counts is all or nothing)
    out = []
    for name in [*now, *(n for n in before if n not in now)]:
        old_kept = before[name]["kept"] if name in before else 0  # a table a pull did not have: no rows
        new_kept = now[name]["kept"] if name in now else 0
        change = None if old_kept == 0 else round(new_kept / old_kept - 1, 4)
        flagged = (old_kept == 0) != (new_kept == 0) or (change is not None and abs(change) >= alert)
        out.append({"table": name, "previous": old_kept, "now": new_kept, "change": change, "flagged": flagged})
    return out


def quality_summary(con: duckdb.DuckDBPyConnection, report: dict, *, top: int = 20) -> dict:
    """Counts per table, subjects, time span, top codes and implausible lab values.

    Row-level data stays in the site; this summary is what may leave it, so counts
    pass through small-cell suppression.
    """
    top_codes = con.execute(
        f"SELECT code, count(*) AS n, count(DISTINCT subject_id) AS subjects FROM kept GROUP BY code ORDER BY n DESC, code LIMIT {top}"
    ).fetchall()
    bounds = ", ".join(f"('{c}', {lo}, {hi})" for c, (lo, hi) in PLAUSIBLE.items())
    implausible = con.execute(
        f"""
        WITH b(code, lo, hi) AS (VALUES {bounds})
        SELECT k.code, count(*) AS n, count(*) FILTER (WHERE k.numeric_value < b.lo OR k.numeric_value > b.hi) AS outside
        FROM kept k JOIN b USING (code) WHERE k.numeric_value IS NOT NULL GROUP BY k.code ORDER BY k.code
        """
    ).fetchall()
    return {
        "site": report["site"],
        "subjects": privacy.suppress(report["subjects"]),
        "events": privacy.suppress(report["events"]),
        "time_span": privacy.month_span(report["time_span"]),
        "tables": table_counts(report)[0],
        "top_codes": [{"code": c, "events": privacy.suppress(n), "subjects": privacy.suppress(s)} for c, n, s in top_codes],
        "values_outside_plausible_range": [
            {"code": c, "values": privacy.suppress(n), "outside": privacy.suppress(o), "bounds": list(PLAUSIBLE[c])}
            for c, n, o in implausible
        ],
    }


def scan_output(folder: Path, identifiers: set[str], *, suffixes: tuple[str, ...] = (".parquet", ".json")) -> list[str]:
    """Scan every string column of every Parquet file and every JSON file under ``folder``."""
    problems: list[str] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.suffix not in suffixes:
            continue
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for f in table.schema:
                if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
                    values = table.column(f.name).unique().to_pylist()
                    problems += deid.scan_strings(values, identifiers, where=f"{rel}:{f.name}")
        elif path.suffix == ".json":
            problems += deid.scan_strings([path.read_text()], identifiers, where=str(rel))
    return problems


def identifier_values(rows: Iterable[Iterable[object]]) -> set[str]:
    """Flatten identifier values (MRNs, names, phones, ...) into the gate's set."""
    return {str(v) for row in rows for v in row if v is not None and str(v).strip()}
