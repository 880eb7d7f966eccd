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
published ones. A night whose people changed by 0 or 11 or more may publish, and is
entered once something of it has (a site whose every task is held is not).

Each task keeps a ledger of its own too (``<workdir>/published_people/<task>``): per
labelled person and split, a digest of their label rows (prediction times and
outcomes) and their event and non-event rows. Before a task's results leave the site,
the people whose label rows changed in number since each night published for that
task are counted in each group of published counts: the cohort, event rows and
non-event rows, each within every split and every union of splits (a count published
for two splits less one of them gives the other). A count of 1 to 10 in any group holds
the task at that site (80 people withdraw and 3 of them had the outcome in the
held-out split: held). The label stage's exclusion steps (prevalent cases, censored
times), which the attrition table publishes, are groups too; and so is each subgroup
level of the held-out split (age band, sex), whose rows, subjects and events the
subgroup tables publish: 5 people whose birth year was corrected move from one age band
to the next, and the two bands' counts would say which of them had the outcome. A group
of fewer than 11 label rows on both nights is left out:
its counts are suppressed on both. People whose records, prediction times or split
alone changed move no count and give no cover.

A held night's reason names no count, no group and no date. The hold itself says that
some group changed by 1 to 10, as "<11" says that a count is small: a reader who knows
that one person withdrew and believes that none of the others who changed had the
outcome learns from a held task what the difference of the counts would have told
them, and nothing finer.

The ledgers stay at the site (``<workdir>/published_people``): pseudonymous subject ids
and 64-bit MD5 sums, never a record; ``<workdir>/published_people.json`` lists the
ledgers kept, so a ledger folder lost later holds the night instead of letting it
through unchecked; and a work folder lost whole, marker and all, holds the night when the
tracking store holds results the site published (``flows.nightly.people_gate``). Digests
hash text (MD5), so they do not move with DuckDB's version.

The temporal validation design keeps one more (``<task>-temporal``) over its own
split by time, and a held one is reported as not run that night.

What it does not cover: counts of finer cells (a calibration bin, a threshold table's
alerts, a characteristics row) can still differ by 1 to 10 between two published nights
whose changed people number 0 or 11 or more in every group above; and a work folder
lost whole, with a tracking store that lost the site's runs too, passes unchecked. A new de-identification secret (or date
shift) renames or moves every person, so no night could be matched: the ledger keeps a
fingerprint of it and holds the night until the operator goes back or knowingly starts
a new ledger.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy import sparse

from forewarn.records import schema
from forewarn.records.privacy import MIN_CELL

LEDGER_DIR = "published_people"
MARKER_FILE = "published_people.json"
INDEX_FILE = "index.json"
KEEP_NIGHTS = 60  # the published nights a new one is compared with (the latest)
_MOD = 2**64
EXCLUDED = "excluded:"  # a task people table's pseudo-split for an exclusion step's times
LEVEL = "level:"  # ... and for a subgroup level's held-out times


def _sum64(expr: str) -> str:
    """An order-free 64-bit sum of per-row MD5s: MD5 and the text it hashes are fixed, so
    a digest does not move with the DuckDB version (its ``hash()`` has)."""
    return f"CAST(sum(CAST(md5_number_lower({expr}) AS HUGEINT)) % {_MOD} AS UBIGINT)"


def _text(*columns: str) -> str:
    """One row as text for :func:`_sum64`: each column cast to text, NULL spelled out."""
    return "concat_ws('|', " + ", ".join(f"coalesce(CAST({c} AS VARCHAR), '~')" for c in columns) + ")"


def person_digests(out_dir: Path) -> pd.DataFrame:
    """One row per person in a pull folder: ``subject_id`` and ``digest``, an
    order-free 64-bit sum of the MD5s of their events and quarantined rows. Two pulls
    give a person the same digest exactly when their rows are the same (up to a
    collision, about 1 in 2**64). Times are hashed as microseconds since the epoch and
    values to a millionth (one too large for that, or not finite, as its text)."""
    events = sorted((out_dir / schema.EVENTS_DIR).glob("*.parquet"))
    quarantine = out_dir / schema.QUARANTINE_DIR / "records.parquet"
    # to a millionth; a value that no integer holds (inf, nan, 1e30) as its own text
    value = "coalesce(CAST(TRY_CAST(round(numeric_value * 1e6) AS BIGINT) AS VARCHAR), CAST(numeric_value AS VARCHAR))"
    parts = []
    if events:
        listing = ", ".join(f"'{p}'" for p in events)
        row = _text("'e'", "epoch_us(time)", "code", value, "text_value", "unit")
        parts.append(f"SELECT subject_id, {row} AS t FROM read_parquet([{listing}])")
    if quarantine.is_file():
        row = _text("'q'", "src_table", "epoch_us(time)", "code", value, "reason")
        parts.append(f"SELECT subject_id, {row} AS t FROM read_parquet('{quarantine}') WHERE subject_id IS NOT NULL")
    if not parts:
        return pd.DataFrame({"subject_id": pd.Series([], dtype="int64"), "digest": pd.Series([], dtype="uint64")})
    sql = (f"SELECT CAST(subject_id AS BIGINT) AS subject_id, {_sum64('t')} AS digest "
           f"FROM ({' UNION ALL '.join(parts)}) GROUP BY 1 ORDER BY 1")
    with duckdb.connect() as con:
        return con.sql(sql).df()


def task_people(labels_path: Path, splits_path: Path, levels: pd.DataFrame | None = None) -> pd.DataFrame:
    """A task's labelled people: one row per person and split they have prediction times
    in (a temporal split puts a person's earlier times in one split and later ones in
    another): ``subject_id``, ``digest`` (of all the person's label rows: prediction
    times and outcomes), ``split``, and ``event_rows`` / ``non_event_rows`` in that split.

    The label stage's exclusions (``<task>.exclusions.parquet``: prevalent cases,
    censored times, ...) come as rows of their own, ``split`` ``excluded:<step>`` and
    their times in ``non_event_rows``: the attrition table publishes them.

    With ``levels`` (one row per label row: ``subject_id``, ``prediction_time`` and a
    column per way the subgroup tables split the held-out rows, each value a string;
    ``evaluation.evaluate.label_demographics``), each held-out person also has a row per
    level they have times in, ``split`` ``level:<column>=<value>``: the subgroup tables
    publish each level's rows, subjects and events.

    The digest covers labels, levels and exclusions only, not the records behind the features:
    the published counts are label rows, and a person whose new records move no label
    must not count as cover for one whose label moved. Nor does it cover the split: who
    moves when the split seed changes is a keyed hash of pseudonyms, which no reader can
    work out."""
    splits_cols = pq.read_schema(splits_path).names
    on = "subject_id, prediction_time" if "prediction_time" in splits_cols else "subject_id"
    exclusions = labels_path.with_name(labels_path.name.removesuffix(".parquet") + ".exclusions.parquet")
    x = (f"SELECT subject_id, step, times FROM read_parquet('{exclusions}')" if exclusions.is_file()
         else "SELECT NULL::BIGINT AS subject_id, NULL::VARCHAR AS step, NULL::BIGINT AS times WHERE false")
    by = [] if levels is None else [c for c in levels.columns if c not in ("subject_id", "prediction_time")]
    if by:  # one row per (label row, level); ``m`` below
        m = " UNION ALL ".join(
            f"SELECT subject_id, CAST(prediction_time AS TIMESTAMP) AS prediction_time, "
            f"'{c}=' || CAST(\"{c}\" AS VARCHAR) AS level FROM task_levels" for c in by)
    else:
        m = "SELECT NULL::BIGINT AS subject_id, NULL::TIMESTAMP AS prediction_time, NULL::VARCHAR AS level WHERE false"
    # a label row's digest covers its levels too (one MD5 a row, not one a level)
    label_row = _text("epoch_us(prediction_time)", "boolean_value", *(f'"{c}"' for c in by))
    label_rows = "l LEFT JOIN task_levels USING (subject_id, prediction_time)" if by else "l"
    sql = f"""
        WITH l AS (SELECT subject_id, prediction_time, boolean_value FROM read_parquet('{labels_path}')),
        x AS ({x}),
        m AS ({m}),
        r AS (SELECT subject_id, {label_row} AS t FROM {label_rows}
              UNION ALL SELECT subject_id, {_text("'x'", 'step', 'times')} FROM x),
        d AS (SELECT subject_id, {_sum64('t')} AS digest FROM r GROUP BY subject_id),
        u AS (SELECT l.subject_id, s.split,
                     count(*) FILTER (WHERE l.boolean_value) AS event_rows,
                     count(*) FILTER (WHERE NOT l.boolean_value) AS non_event_rows
              FROM l JOIN read_parquet('{splits_path}') s USING ({on}) GROUP BY l.subject_id, s.split
              UNION ALL SELECT subject_id, '{EXCLUDED}' || step, 0, times FROM x
              UNION ALL SELECT l.subject_id, '{LEVEL}' || m.level,
                     count(*) FILTER (WHERE l.boolean_value), count(*) FILTER (WHERE NOT l.boolean_value)
              FROM l JOIN m USING (subject_id, prediction_time) JOIN read_parquet('{splits_path}') s USING ({on})
              WHERE s.split = '{schema.HELD_OUT}' GROUP BY l.subject_id, m.level)
        SELECT CAST(u.subject_id AS BIGINT) AS subject_id, d.digest, u.split,
               CAST(u.event_rows AS BIGINT) AS event_rows, CAST(u.non_event_rows AS BIGINT) AS non_event_rows
        FROM u JOIN d USING (subject_id) ORDER BY 1, 3"""
    with duckdb.connect() as con:
        if by:
            con.register("task_levels", levels)
        return con.sql(sql).df()


def changed_counts(now: pd.DataFrame, then: pd.DataFrame) -> dict[str, int]:
    """How many people changed between two people tables, per group of published counts.

    Two :func:`person_digests` tables: ``all``, the people added, removed or with any
    row changed. Two :func:`task_people` tables: in each group, the people whose label
    rows in it differ in number between the nights (their difference is what the
    group's counts would give away): ``all`` (label rows of either outcome), and for
    event rows, non-event rows and both (``event``, ``non_event``, ``rows``) within every
    split and every union of splits (``held_out/event``, ``train+tuning/rows``; a count
    published for two splits and one of them gives the other back by subtraction); with
    exclusions, ``candidates`` (labelled and excluded times), ``excluded`` (every step's;
    the candidates less the labelled) and each ``excluded:<step>``;
    with subgroup levels, the same three for each level of the held-out split
    (``level:age_band=40-49/event``), for the subgroup columns both nights keep (a night
    entered before the ledger kept a column, race and ethnicity before session 41, has
    none of its levels to compare).
    A person whose label rows are the same but for their split (another split seed) is
    not counted: who moves is a keyed hash of pseudonyms, which no reader can work out.

    A group whose label rows number fewer than ``MIN_CELL`` on both nights is left out:
    its counts are suppressed on both (and the metrics they decide withheld), so their
    difference gives nothing; holding the night for it would keep a site whose rare
    outcome falls below 11 in a split out of every later night, the network's model
    included."""
    digests = [t.drop_duplicates("subject_id")[["subject_id", "digest"]] for t in (now, then)]
    both = digests[0].merge(digests[1], on="subject_id", how="outer", suffixes=("_now", "_then"), indicator=True)
    if "split" not in now.columns:
        return {"all": int(((both["_merge"] != "both") | (both["digest_now"] != both["digest_then"])).sum())}
    same_labels = both.loc[(both["_merge"] == "both") & (both["digest_now"] == both["digest_then"]), "subject_id"]
    columns = ["subject_id", "split", "event_rows", "non_event_rows"]
    rows = now[columns].merge(then[columns], on=["subject_id", "split"], how="outer", suffixes=("_now", "_then"))
    rows = rows.fillna(0)
    rows = rows[~rows["subject_id"].isin(same_labels)]
    every = sorted(set(now["split"].unique()) | set(then["split"].unique()))
    splits = [s for s in every if not s.startswith((EXCLUDED, LEVEL))]
    steps = [s for s in every if s.startswith(EXCLUDED)]
    # A night entered before the ledger kept a subgroup column (any levels at all, or race
    # and ethnicity, kept since session 41) has none of its levels: they cannot be compared
    # (and were not before, so the first night to publish them gives nothing away by
    # difference), so only the columns both nights keep are.
    kept = [{level_column(s) for s in t["split"].unique() if s.startswith(LEVEL)} for t in (now, then)]
    levels = [s for s in every if s.startswith(LEVEL) and level_column(s) in kept[0] & kept[1]]
    totals = {side: t.groupby("split")[["event_rows", "non_event_rows"]].sum() for side, t in (("now", now), ("then", then))}
    sizes = {side: {(split, cls): int(totals[side].at[split, f"{cls}_rows"]) if split in totals[side].index else 0
                    for split in every for cls in ("event", "non_event")} for side in ("now", "then")}

    # Each person's change of label rows per split and class: a sparse people x splits
    # matrix per class, so that a group's changed people are one product away.
    people_index = pd.factorize(rows["subject_id"])[0]
    split_at = {split: i for i, split in enumerate(every)}
    split_codes = rows["split"].map(split_at).to_numpy()
    shape = (int(people_index.max()) + 1 if len(rows) else 0, len(every))
    change = {cls: sparse.csr_matrix(((rows[f"{cls}_rows_now"] - rows[f"{cls}_rows_then"]).to_numpy(np.int64),
                                      (people_index, split_codes)), shape=shape) for cls in ("event", "non_event")}

    def differ(group: list[str], classes: tuple[str, ...]) -> int:
        """The people whose label rows of ``classes`` in the ``group``'s splits differ in number."""
        if not shape[0]:
            return 0
        pick = np.zeros(len(every), np.int64)
        pick[[split_at[s] for s in group]] = 1
        return int(np.count_nonzero(sum(change[c] @ pick for c in classes)))

    def size(subset, classes) -> int:
        return max(sum(sizes[side][(split, c)] for split in subset for c in classes) for side in ("now", "then"))

    both_classes = ("event", "non_event")
    counts = {"all": differ(splits, both_classes)}
    if steps:  # the candidates (labelled and excluded times), and the excluded: candidates less labelled
        counts["candidates"] = differ(splits + steps, both_classes)
        if len(steps) > 1 and size(steps, ("non_event",)) >= MIN_CELL:
            counts["excluded"] = differ(steps, ("non_event",))
    for step in steps:
        if max(sizes[side][(step, "non_event")] for side in ("now", "then")) >= MIN_CELL:
            counts[step] = differ([step], ("non_event",))

    # Event rows, non-event rows and both (a split's size), within every split and every
    # union of splits (the union of all of them is "all" for both classes).
    for name, classes in (("event", ("event",)), ("non_event", ("non_event",)), ("rows", both_classes)):
        for k in range(len(splits), 0, -1):
            for subset in itertools.combinations(splits, k):
                if (k == len(splits) and name == "rows") or size(subset, classes) < MIN_CELL:
                    continue
                group = name if k == len(splits) else f"{'+'.join(subset)}/{name}"
                counts[group] = differ(list(subset), classes)
    # Each subgroup level of the held-out split: its rows and subjects, and its events.
    for level in levels:
        for name, classes in (("event", ("event",)), ("non_event", ("non_event",)), ("rows", both_classes)):
            if size([level], classes) >= MIN_CELL:
                counts[f"{level}/{name}"] = differ([level], classes)
    return counts


def level_column(split: str) -> str:
    """The subgroup column of a level's pseudo-split: ``level:race=White`` -> ``race``."""
    return split.removeprefix(LEVEL).partition("=")[0]


def changed_people(now: pd.DataFrame, then: pd.DataFrame) -> int:
    """How many people were added, removed or changed between two people tables."""
    return changed_counts(now, then)["all"]


class PeopleLedger:
    """The published nights of one site (see the module's docstring)."""

    def __init__(self, workdir: Path, *, task: str | None = None, keep: int = KEEP_NIGHTS):
        self.folder = Path(workdir) / LEDGER_DIR / (task or "")
        self.task = task
        self.index_path = self.folder / INDEX_FILE
        # Beside the folder: which ledgers this site has kept, so that a folder lost
        # later holds the night rather than letting it through unchecked.
        self.marker = Path(workdir) / MARKER_FILE
        self.scope = f"task:{task}" if task else "site"
        self.keep = keep

    def _marked(self) -> list[str]:
        try:
            return list(json.loads(self.marker.read_text())) if self.marker.is_file() else []
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{self.marker}: not a list of ledgers ({exc}); restore it from the site's backup") from exc

    def entries(self) -> list[dict]:
        """The published nights, oldest first: ``pull`` (content digest), ``date``, ``file``.
        Raises ValueError when the index is unreadable, names a missing file, or is gone
        although this ledger has recorded before."""
        if not self.index_path.is_file():
            if self.scope in self._marked():
                raise ValueError(missing_ledger_reason(self.index_path))
            return []
        try:
            entries = json.loads(self.index_path.read_text())
            if not isinstance(entries, list) or not all(isinstance(e, dict) and {"pull", "date", "file"} <= e.keys()
                                                        for e in entries):
                raise ValueError("expected a list of {pull, date, file} entries")
            missing = [e["file"] for e in entries if not (self.folder / e["file"]).is_file()]
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{self.index_path}: not a people ledger index ({exc}); restore it from the site's "
                             "backup: without it, tonight cannot be compared with the nights already published") from exc
        if missing:
            raise ValueError(f"{self.index_path}: names {', '.join(missing)}, which is missing from {self.folder}; "
                             "restore it from the site's backup")
        return entries

    def check(self, pull_digest: str, people: pd.DataFrame | Callable[[], pd.DataFrame], *,
              deid: str | None = None) -> dict:
        """Compare a night's people with every published night's. Returns ``held`` (True
        when any comparison found 1 to 10 changed people in a group), ``against`` (the
        date of the first such night, for the site's own log, else None), ``compared``
        (how many nights), ``known`` (this very pull was published already) and
        ``task``. ``deid`` fingerprints the de-identification (secret, date shift): a
        night under another one cannot be matched with the published nights (everyone
        would count as changed), so ValueError says so. ``people`` may be a call that
        makes the table: a pull published already never needs it."""
        entries = self.entries()
        other = [e for e in entries if deid is not None and e.get("deid") not in (None, deid)]
        if other:
            raise ValueError("the de-identification changed since a published night (another secret or "
                             "date shift): tonight's people cannot be matched with those of the nights already published. "
                             f"Go back to the earlier secret, or knowingly start an empty ledger (`echo [] > {self.index_path}`): "
                             "the nights before it are then not compared")
        for entry in entries:
            if entry["pull"] == pull_digest:
                return {"held": False, "against": None, "compared": len(entries), "known": True, "task": self.task}
        if callable(people):
            people = people()
        for entry in reversed(entries):
            then = pd.read_parquet(self.folder / entry["file"])
            if any(0 < n < MIN_CELL for n in changed_counts(people, then).values()):
                return {"held": True, "against": entry["date"], "compared": len(entries), "known": False,
                        "task": self.task}
        return {"held": False, "against": None, "compared": len(entries), "known": False, "task": self.task}

    def record(self, pull_digest: str, people: pd.DataFrame | Callable[[], pd.DataFrame], *,
               deid: str | None = None) -> None:
        """Enter a published night (once per pull; the oldest beyond ``keep`` leave)."""
        entries = self.entries()
        if any(e["pull"] == pull_digest for e in entries):
            return
        if callable(people):
            people = people()
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{pull_digest[:24]}.parquet"
        tmp = self.folder / (name + ".partial")
        people.to_parquet(tmp, index=False)
        tmp.replace(self.folder / name)
        entries.append({"pull": pull_digest, "date": datetime.now(UTC).strftime("%Y-%m-%d"), "file": name,
                        **({"deid": deid} if deid else {})})
        dropped, entries = entries[:-self.keep], entries[-self.keep:]
        tmp = self.index_path.with_suffix(".partial")
        tmp.write_text(json.dumps(entries, indent=1))
        tmp.replace(self.index_path)
        marked = self._marked()
        if self.scope not in marked:
            tmp = self.marker.with_suffix(".partial")
            tmp.write_text(json.dumps([*marked, self.scope]))
            tmp.replace(self.marker)
        for entry in dropped:
            (self.folder / entry["file"]).unlink(missing_ok=True)


def held_reason(check: dict, *, design: str = "") -> str:
    """The reason a held night gives. No count, no group and no date: each would tell
    more of what the hold protects (which night tonight is close to, which of the
    changed people had the outcome)."""
    if design:
        return (f"fewer than {MIN_CELL} of the {design} design's people changed in one of the groups its counts cover "
                "since a night whose results for it left this site: tonight's counts, less that night's, would be "
                f"theirs. The {design} validation is not published tonight; the task's other results are")
    if check.get("task"):
        return (f"fewer than {MIN_CELL} of this task's people changed in one of the groups its counts cover since a "
                "night whose results for it left this site: tonight's counts, less that night's, would be theirs. "
                "Nothing of this task from this site is published tonight (the champion stays); it publishes again "
                f"once every such group has changed by {MIN_CELL} or more, or none")
    return (f"fewer than {MIN_CELL} people's records changed since a night whose results left this site: tonight's "
            "counts, less that night's, would be theirs. Nothing from this site is published tonight (the champion "
            f"stays); it publishes again once {MIN_CELL} or more people have changed, or none")


def missing_ledger_reason(index_path: Path) -> str:
    """The reason a night is held when the site has published under a ledger that is gone."""
    return (f"the people ledger is missing ({index_path}) although this site has recorded in it: tonight "
            "cannot be compared with the nights already published. Restore the folder from the site's backup; "
            f"or, knowingly, start an empty ledger (`echo [] > {index_path}`): the nights before it are then "
            "not compared")


def unledgered_reason(index_path: Path) -> str:
    """The reason a night is held when the tracking store holds results this site
    published but the site keeps no people ledger (its work folder was lost or moved)."""
    return (f"this site has published results (the tracking store holds them) but keeps no people ledger "
            f"({index_path}): tonight cannot be compared with the nights already published. Restore the work "
            "folder from the site's backup (or point `workdir` at it); or, knowingly, start an empty ledger "
            f"(`mkdir -p {index_path.parent} && echo [] > {index_path}`): the nights before it are then not compared")
