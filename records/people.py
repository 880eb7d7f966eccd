"""The rule of 11 between nights: a site's ledger of the people behind each published night.

Each night follows the rule of 11 on its own, but two nights' published counts,
subtracted, count the people whose records changed between them: if one known person
withdraws and nothing else changes, the next night's held-out events say whether they
had the outcome. So a site keeps, for every night whose results left it, a digest of
each person's pulled records (their events and quarantined rows, after
de-identification). A new night is compared with each of them: when the people whose
records differ (added, removed or changed) number 1 to 10 against any published night,
the site publishes nothing that night (its status is "held"; the champion stays), and
the night is not entered in the ledger, so the next night is compared with the same
published ones. A night whose people changed by 0 or 11 or more is published and
entered.

The ledger stays at the site (``<workdir>/published_people``): pseudonymous subject ids
and 64-bit digests, never a record. The number of changed people is never published;
a held night says only "fewer than 11".

Each task keeps a ledger of its own too (``<workdir>/published_people/<task>``): per
labelled person, a digest of their records and labels, their split and whether they
have event and non-event prediction times. Before a task's results leave the site, the
people who changed since each night published for that task are counted in its cohort,
among those with an event and those without, and so within each split: a count of 1 to
10 in any of them holds the task at that site (80 people withdraw and 3 of them had the
outcome in the held-out split: held). The reason never names the group. The hold itself
says that some group changed by 1 to 10, as "<11" says that a count is small: a reader
who knows that one person withdrew and believes that none of the others who changed
had the outcome learns from a held task what the difference of the counts would have
told them, and nothing finer.

What it does not cover: counts of finer cells (a subgroup level, a calibration bin, a
temporal split's test set) can still differ by 1 to 10 between two published nights
whose changed people number 0 or 11 or more in every group above.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd

from forewarn.records import schema
from forewarn.records.privacy import MIN_CELL

LEDGER_DIR = "published_people"
INDEX_FILE = "index.json"
KEEP_NIGHTS = 60  # the published nights a new one is compared with (the latest)
_MOD = 2**64


def person_digests(out_dir: Path) -> pd.DataFrame:
    """One row per person in a pull folder: ``subject_id`` and ``digest``, an
    order-free 64-bit sum of the hashes of their events and quarantined rows. Two pulls
    give a person the same digest exactly when their rows are the same (up to a hash
    collision, about 1 in 2**64)."""
    events = sorted((out_dir / schema.EVENTS_DIR).glob("*.parquet"))
    quarantine = out_dir / schema.QUARANTINE_DIR / "records.parquet"
    parts = []
    if events:
        listing = ", ".join(f"'{p}'" for p in events)
        parts.append(f"SELECT subject_id, hash('e', time, code, numeric_value, text_value, unit) AS h "
                     f"FROM read_parquet([{listing}])")
    if quarantine.is_file():
        parts.append(f"SELECT subject_id, hash('q', src_table, time, code, numeric_value, reason) AS h "
                     f"FROM read_parquet('{quarantine}') WHERE subject_id IS NOT NULL")
    if not parts:
        return pd.DataFrame({"subject_id": pd.Series([], dtype="int64"), "digest": pd.Series([], dtype="uint64")})
    sql = (f"SELECT CAST(subject_id AS BIGINT) AS subject_id, CAST(sum(CAST(h AS HUGEINT)) % {_MOD} AS UBIGINT) AS digest "
           f"FROM ({' UNION ALL '.join(parts)}) GROUP BY 1 ORDER BY 1")
    with duckdb.connect() as con:
        return con.sql(sql).df()


def task_people(labels_path: Path, splits_path: Path, site_people: pd.DataFrame) -> pd.DataFrame:
    """One row per labelled person of a task: ``subject_id``, ``digest`` (their records'
    digest from :func:`person_digests` combined with their label rows), ``split``, and
    ``event`` / ``non_event`` (whether any of their prediction times is labelled with /
    without the outcome).

    A person whose split alone changed (another ``split_seed``) is not changed: who
    moved is a keyed hash of pseudonyms, which no reader can work out, so the
    difference it makes names no one. They still count in both nights' groups when
    their records changed."""
    sql = f"""
        WITH l AS (
            SELECT subject_id, CAST(sum(CAST(hash(prediction_time, boolean_value) AS HUGEINT)) % {_MOD} AS UBIGINT) AS h,
                   bool_or(boolean_value) AS event, bool_or(NOT boolean_value) AS non_event
            FROM read_parquet('{labels_path}') GROUP BY subject_id)
        SELECT l.subject_id, hash(l.h, p.digest) AS digest, s.split, l.event, l.non_event
        FROM l JOIN read_parquet('{splits_path}') s USING (subject_id)
        LEFT JOIN site_people p USING (subject_id)
        ORDER BY l.subject_id"""
    with duckdb.connect() as con:
        con.register("site_people", site_people)
        return con.sql(sql).df()


def changed_counts(now: pd.DataFrame, then: pd.DataFrame) -> dict[str, int]:
    """How many people were added, removed or had any record changed between two
    people tables (:func:`person_digests` or :func:`task_people`): ``all``, and for a
    task's tables also within ``event`` and ``non_event`` and each ``<split>/event`` and
    ``<split>/non_event``, a person counting in each group they belong to on either
    night. A group of fewer than ``MIN_CELL`` people on both nights is left out: its
    counts are suppressed on both (and the metrics they decide withheld), so their
    difference gives nothing; holding the night for it would keep a site whose rare
    outcome falls below 11 in a split out of every later night, the network's model
    included."""
    both = now.merge(then, on="subject_id", how="outer", suffixes=("_now", "_then"), indicator=True)
    changed = both[(both["_merge"] != "both") | (both["digest_now"] != both["digest_then"])]
    counts = {"all": len(changed)}
    if "split" not in now.columns:
        return counts
    splits = sorted(set(now["split"]) | set(then["split"]))
    for cls in ("event", "non_event"):
        sides = [changed[f"{cls}_{side}"].fillna(False).astype(bool) for side in ("now", "then")]
        size = max(int(now[cls].sum()), int(then[cls].sum()))
        if size >= MIN_CELL:
            counts[cls] = int((sides[0] | sides[1]).sum())
        for split in splits:
            size = max(int((now[cls] & (now["split"] == split)).sum()), int((then[cls] & (then["split"] == split)).sum()))
            if size >= MIN_CELL:
                within = (sides[0] & (changed["split_now"] == split)) | (sides[1] & (changed["split_then"] == split))
                counts[f"{split}/{cls}"] = int(within.sum())
    return counts


def changed_people(now: pd.DataFrame, then: pd.DataFrame) -> int:
    """How many people were added, removed or had any record changed between two
    people tables."""
    return changed_counts(now, then)["all"]


class PeopleLedger:
    """The published nights of one site (see the module's docstring)."""

    def __init__(self, workdir: Path, *, task: str | None = None, keep: int = KEEP_NIGHTS):
        self.folder = Path(workdir) / LEDGER_DIR / (task or "")
        self.task = task
        self.index_path = self.folder / INDEX_FILE
        self.keep = keep

    def entries(self) -> list[dict]:
        """The published nights, oldest first: ``pull`` (content digest), ``date``, ``file``."""
        if not self.index_path.is_file():
            return []
        try:
            entries = json.loads(self.index_path.read_text())
            missing = [e["file"] for e in entries if not (self.folder / e["file"]).is_file()]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.index_path}: not a people ledger index ({exc}); restore it from the site's "
                             "backup: without it, tonight cannot be compared with the nights already published") from exc
        if missing:
            raise ValueError(f"{self.index_path}: names {', '.join(missing)}, which is missing from {self.folder}; "
                             "restore it from the site's backup")
        return entries

    def check(self, pull_digest: str, people: pd.DataFrame) -> dict:
        """Compare a night's people with every published night's. Returns ``held`` (True
        when any comparison found 1 to 10 changed people), ``against`` (the date of the
        first such night, else None), ``compared`` (how many nights) and ``known``
        (this very pull was published already)."""
        entries = self.entries()
        for entry in entries:
            if entry["pull"] == pull_digest:
                return {"held": False, "against": None, "compared": len(entries), "known": True, "task": self.task}
        for entry in reversed(entries):
            then = pd.read_parquet(self.folder / entry["file"])
            if any(0 < n < MIN_CELL for n in changed_counts(people, then).values()):
                return {"held": True, "against": entry["date"], "compared": len(entries), "known": False,
                        "task": self.task}
        return {"held": False, "against": None, "compared": len(entries), "known": False, "task": self.task}

    def record(self, pull_digest: str, people: pd.DataFrame) -> None:
        """Enter a published night (once per pull; the oldest beyond ``keep`` leave)."""
        entries = self.entries()
        if any(e["pull"] == pull_digest for e in entries):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{pull_digest[:24]}.parquet"
        tmp = self.folder / (name + ".partial")
        people.to_parquet(tmp, index=False)
        tmp.replace(self.folder / name)
        entries.append({"pull": pull_digest, "date": datetime.now(UTC).strftime("%Y-%m-%d"), "file": name})
        dropped, entries = entries[:-self.keep], entries[-self.keep:]
        tmp = self.index_path.with_suffix(".partial")
        tmp.write_text(json.dumps(entries, indent=1))
        tmp.replace(self.index_path)
        for entry in dropped:
            (self.folder / entry["file"]).unlink(missing_ok=True)


def held_reason(check: dict) -> str:
    """The reason a held night gives. No count and no group: either would tell what the
    hold protects (which of the changed people had the outcome)."""
    if check.get("task"):
        return (f"fewer than {MIN_CELL} of this task's people changed in one of the groups its counts cover "
                f"since a night whose results for it left this site ({check['against']}): tonight's counts, less "
                f"that night's, would be theirs. Nothing of this task from this site is published tonight (the "
                f"champion stays); it publishes again once every such group has changed by {MIN_CELL} or more, or none")
    return (f"fewer than {MIN_CELL} people's records changed since a night whose results left this site "
            f"({check['against']}): tonight's counts, less that night's, would be theirs. Nothing from this "
            f"site is published tonight (the champion stays); it publishes again once {MIN_CELL} or more "
            "people have changed, or none")
