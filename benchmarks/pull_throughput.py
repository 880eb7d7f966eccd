"""Pull throughput (events/s) and peak memory for OMOP on DuckDB, OMOP on PostgreSQL
and FHIR Bulk NDJSON, each at one million events or more, in one run.

    .venv/bin/python benchmarks/pull_throughput.py --people 10000
    .venv/bin/python benchmarks/pull_throughput.py --people 10000 --postgres postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python benchmarks/pull_throughput.py --people 10000 --vocabulary-concepts 1000000 --skip-fhir

``--vocabulary-concepts N`` adds N unused concepts and 3N relationships (a third "Maps to")
to the PostgreSQL copy, as a site's full OMOP vocabulary would (Athena's is about 6 M
concepts and tens of millions of relationships), pulls it again, and times what the pull
did before session 7 with those two tables: stream them whole into the working database.

Each pull runs in its own process, so its peak RSS is its own; preparing the inputs
(generating the OMOP site, loading PostgreSQL, writing NDJSON) is not timed. Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
from datetime import datetime
from pathlib import Path
from forewarn.records.deid import DeidConfig
from forewarn.records.sources import pull_source
fmt, location, out, schema = sys.argv[1:5]
start = time.perf_counter()
r = pull_source(fmt, location, Path(out), site="bench", config=DeidConfig(b"benchmark-secret-0123456789"),
                now=datetime(2026, 1, 1), db_schema=schema or None)
print(json.dumps({"seconds": time.perf_counter() - start, "events": r.events, "read": r.read,
                  "subjects": r.subjects, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_pull(fmt: str, location: str, out: Path, schema: str = "") -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, fmt, location, str(out), schema], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{fmt} pull failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_postgres(db: Path, url: str) -> tuple[str, callable]:
    """Copy every table of the DuckDB file into a fresh schema (not timed)."""
    import duckdb
    import psycopg

    schema = f"forewarn_bench_{uuid.uuid4().hex[:8]}"
    src = duckdb.connect(str(db), read_only=True)
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as pg:
        pg.execute(f'CREATE SCHEMA "{schema}"')
        for (table,) in src.execute("SELECT table_name FROM information_schema.tables").fetchall():
            cols = src.execute(f"DESCRIBE {table}").fetchall()
            types = {"BIGINT": "bigint", "INTEGER": "integer", "DOUBLE": "double precision", "DATE": "date",
                     "TIMESTAMP": "timestamp", "VARCHAR": "text", "FLOAT": "real"}
            ddl = ", ".join(f'"{c[0]}" {types.get(c[1], "text")}' for c in cols)
            pg.execute(f'CREATE TABLE "{schema}"."{table}" ({ddl})')
            csv = Path(tempfile.mkdtemp()) / f"{table}.csv"
            src.execute(f"COPY {table} TO '{csv}' (HEADER false)")
            with pg.cursor() as cur, cur.copy(f'COPY "{schema}"."{table}" FROM STDIN WITH (FORMAT csv)') as copy:
                with csv.open("rb") as fh:
                    while chunk := fh.read(1 << 20):
                        copy.write(chunk)
            csv.unlink()
    src.close()

    def drop() -> None:
        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute(f'DROP SCHEMA "{schema}" CASCADE')

    return schema, drop


VOCABULARY_CHILD = """
import json, resource, sys, time
import duckdb, sqlalchemy as sa
from forewarn.records.omop import _stream_rows
from forewarn.records.pull import PullContext
url, schema = sys.argv[1:3]
con = duckdb.connect()
con.execute("CREATE SCHEMA src")
ctx = PullContext.__new__(PullContext)
ctx.con = con
start, n = time.perf_counter(), 0
with sa.create_engine(url).connect() as conn:
    for table, cols in (("concept", ["concept_id", "vocabulary_id", "concept_code", "concept_name"]),
                        ("concept_relationship", ["concept_id_1", "concept_id_2", "relationship_id", "invalid_reason"])):
        n += _stream_rows(ctx, conn, table, cols, sa.text(f'SELECT {", ".join(cols)} FROM "{schema}".{table}'), None, 200_000)
print(json.dumps({"seconds": time.perf_counter() - start, "rows": n,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def add_vocabulary(url: str, schema: str, n: int) -> None:
    """``n`` unused concepts and ``3 n`` relationships among them, made by the server (not timed)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as pg:
        pg.execute(f"""INSERT INTO "{schema}".concept (concept_id, concept_name, vocabulary_id, concept_code)
                       SELECT 50000000 + g, 'synthetic concept ' || g, 'SYNTH', g::text FROM generate_series(1, {n}) g""")
        pg.execute(f"""INSERT INTO "{schema}".concept_relationship (concept_id_1, concept_id_2, relationship_id)
                       SELECT 50000000 + (g % {n}) + 1, 50000000 + ((g * 7) % {n}) + 1,
                              (ARRAY['Maps to', 'Is a', 'Subsumes'])[g % 3 + 1] FROM generate_series(1, {3 * n}) g""")
        pg.execute(f'ANALYZE "{schema}".concept; ANALYZE "{schema}".concept_relationship')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=10_000, help="people in the OMOP site (academic profile)")
    parser.add_argument("--fhir-patients", type=int, default=10_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-fhir", action="store_true")
    parser.add_argument("--vocabulary-concepts", type=int, default=0, help="also pull PostgreSQL with this many more (unused) concepts")
    args = parser.parse_args()

    from forewarn.records.demo import SITES, generate_site

    sys.path.insert(0, str(REPO / "tests"))
    from fhir_fixtures import write_large_ndjson

    rows = []
    with tempfile.TemporaryDirectory(prefix="forewarn-pull-bench-") as tmp:
        tmp = Path(tmp)
        db = tmp / "omop.duckdb"
        t = time.perf_counter()
        generate_site(db, SITES["academic"], args.people, seed=3)
        print(f"generated OMOP site: {args.people:,} people in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        rows.append(("OMOP, DuckDB file", run_pull("omop", str(db), tmp / "out-duckdb")))
        if not args.skip_postgres:
            schema, drop = load_postgres(db, args.postgres)
            try:
                rows.append(("OMOP, PostgreSQL (SQLAlchemy, streamed)", run_pull("omop", args.postgres, tmp / "out-pg", schema)))
                if args.vocabulary_concepts:
                    n = args.vocabulary_concepts
                    add_vocabulary(args.postgres, schema, n)
                    rows.append((f"OMOP, PostgreSQL + {n:,} concepts, {3 * n:,} relationships",
                                 run_pull("omop", args.postgres, tmp / "out-pg-vocab", schema)))
                    report = json.loads((tmp / "out-pg-vocab" / "pull_report.json").read_text())
                    print(f"vocabulary rows the pull read: {report['source']['vocabulary_rows_read']}", file=sys.stderr)
                    proc = subprocess.run([sys.executable, "-c", VOCABULARY_CHILD, args.postgres, schema], capture_output=True, text=True)
                    if proc.returncode:
                        raise SystemExit(f"whole-vocabulary stream failed:\n{proc.stderr[-3000:]}")
                    whole = json.loads(proc.stdout.strip().splitlines()[-1])
                    print(f"\nBefore session 7 the pull also streamed both vocabulary tables whole: {whole['rows']:,} rows in "
                          f"{whole['seconds']:.1f} s, peak RSS {whole['peak_rss_mb']:,.0f} MB (that step alone, in its own process)\n")
            finally:
                drop()
        if not args.skip_fhir:
            nd = tmp / "ndjson"
            write_large_ndjson(nd, args.fhir_patients, seed=1)
            rows.append(("FHIR R4 Bulk NDJSON", run_pull("fhir", str(nd), tmp / "out-fhir")))
    print("| source | subjects | source rows | events | seconds | events/s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['subjects']:,} | {r['read']:,} | {r['events']:,} | {r['seconds']:.1f} | "
              f"{r['events'] / r['seconds']:,.0f} | {r['peak_rss_mb']:,.0f} |")


if __name__ == "__main__":
    main()
