"""One entry point for every source format a site may hold."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from forewarn.records import deid
from forewarn.records.pull import PullResult

Format = Literal["omop", "meds", "fhir"]
FORMATS: tuple[str, ...] = ("omop", "meds", "fhir")


def pull_source(
    format: str,
    location: str | Path,
    out_dir: Path,
    *,
    site: str,
    config: deid.DeidConfig,
    now: datetime | None = None,
    max_bad_fraction: float = 0.05,
    db_schema: str | None = None,
    shard_subjects: int = 100_000,
    part: tuple[int, int] | None = None,
) -> PullResult:
    """Pull ``location`` (a path, or a SQLAlchemy URL for OMOP) of ``format`` into ``out_dir``.

    ``part=(index, count)`` pulls only that part of the subjects (see
    ``records.pull.part_predicate``); ``records.pull.merge_parts`` joins the parts."""
    common = dict(site=site, config=config, now=now, max_bad_fraction=max_bad_fraction, shard_subjects=shard_subjects,
                  part=part)
    if format == "omop":
        from forewarn.records.omop import pull_omop

        return pull_omop(location, out_dir, db_schema=db_schema, **common)
    if db_schema is not None:
        raise ValueError(f"db_schema applies to OMOP databases only; got it for format {format!r}.")
    if format == "meds":
        from forewarn.records.meds_source import pull_meds

        return pull_meds(Path(location), out_dir, **common)
    if format == "fhir":
        from forewarn.records.fhir import pull_fhir

        return pull_fhir(Path(location), out_dir, **common)
    raise ValueError(f"format must be one of {list(FORMATS)}; got {format!r}.")
