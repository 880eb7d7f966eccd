"""The rule of 11 between nights (``records.people``): a night whose people changed by 1
to 10 since a published night publishes nothing; 0 or 11 or more, it publishes."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import flow_workdir

from forewarn.records import schema
from forewarn.records.people import (
    LEDGER_DIR,
    PeopleLedger,
    changed_counts,
    changed_people,
    held_reason,
    person_digests,
    task_people,
)


def write_pull(folder: Path, events: list[tuple], quarantined: list[tuple] = ()) -> Path:
    """A pull folder by hand: events (subject, day, code, value) and quarantined rows
    (subject or None, code, reason)."""
    (folder / schema.EVENTS_DIR).mkdir(parents=True)
    (folder / schema.QUARANTINE_DIR).mkdir(parents=True)
    table = pa.table({
        "subject_id": pa.array([e[0] for e in events], pa.int64()),
        "time": pa.array([datetime(2020, 1, 1 + e[1]) for e in events], pa.timestamp("us")),
        "code": [e[2] for e in events],
        "numeric_value": pa.array([e[3] for e in events], pa.float32()),
    })
    pq.write_table(schema.align(table, schema.DATA_SCHEMA), folder / schema.EVENTS_DIR / "0.parquet")
    pq.write_table(pa.table({
        "src_table": ["measurement"] * len(quarantined), "location": list(range(len(quarantined))),
        "subject_id": pa.array([q[0] for q in quarantined], pa.int64()),
        "time": pa.array([None] * len(quarantined), pa.timestamp("us")),
        "code": [q[1] for q in quarantined], "numeric_value": pa.array([None] * len(quarantined), pa.float32()),
        "reason": [q[2] for q in quarantined],
    }), folder / schema.QUARANTINE_DIR / "records.parquet")
    return folder


def people(n: int, *, changed: tuple[int, ...] = (), start: int = 0) -> pd.DataFrame:
    """Digests of ``n`` people (ids start..start+n-1) whose records are the same on every
    night but for those in ``changed``."""
    ids = list(range(start, start + n))
    return pd.DataFrame({"subject_id": pd.Series(ids, dtype="int64"),
                         "digest": pd.Series([i * 7 + (1000 if i in changed else 0) for i in ids], dtype="uint64")})


def test_digests_tell_people_apart_by_their_rows_in_any_order(tmp_path):
    base = [(1, 0, "A", 1.0), (1, 2, "B", None), (2, 1, "A", 5.5), (2, 1, "A", 5.5), (3, 0, "C", None)]
    first = person_digests(write_pull(tmp_path / "n1", base, [(3, "LOINC/1", "value out of range"), (None, "?", "unreadable")]))
    assert list(first["subject_id"]) == [1, 2, 3]
    # The same rows in another order: the same digests.
    again = person_digests(write_pull(tmp_path / "n2", base[::-1], [(3, "LOINC/1", "value out of range")]))
    assert changed_people(again, first) == 0
    # Person 2 loses one of two identical rows, person 3 a quarantined row, person 4 arrives.
    later = [r for r in base if r[0] != 2] + [(2, 1, "A", 5.5), (4, 0, "A", 1.0)]
    third = person_digests(write_pull(tmp_path / "n3", later))
    assert changed_people(third, first) == 3
    assert set(third.merge(first, on="subject_id", suffixes=("", "_then")).query("digest != digest_then")["subject_id"]) == {2, 3}


def write_labels(folder: Path, rows: list[tuple], splits: dict[int, str]) -> tuple[Path, Path]:
    folder.mkdir(parents=True)
    labels = pd.DataFrame(rows, columns=["subject_id", "day", "boolean_value"])
    labels["prediction_time"] = [datetime(2021, 1, 1 + d) for d in labels.pop("day")]
    labels[["subject_id", "prediction_time", "boolean_value"]].to_parquet(folder / "labels.parquet", index=False)
    pd.DataFrame({"subject_id": list(splits), "split": list(splits.values())}).to_parquet(folder / "splits.parquet", index=False)
    return folder / "labels.parquet", folder / "splits.parquet"


def test_digests_take_values_no_integer_holds(tmp_path):
    # A value beyond 64-bit microunits, infinite or not a number still has a digest, and
    # its own: a source that lets one through must not hold every night after it.
    values = [1e30, float("inf"), float("nan"), None, 2e30]
    digests = [person_digests(write_pull(tmp_path / str(k), [(1, 0, "LAB//A", v)]))["digest"].item()
               for k, v in enumerate(values)]
    assert len(set(digests)) == len(values)


def test_task_people_carry_splits_row_counts_and_a_digest_of_labels(tmp_path):
    rows = [(1, 0, False), (1, 5, True), (2, 0, False)]
    first = task_people(*write_labels(tmp_path / "n1", rows, {1: "train", 2: "held_out"}))
    assert first[["subject_id", "split", "event_rows", "non_event_rows"]].values.tolist() == [
        [1, "train", 1, 1], [2, "held_out", 0, 1]]
    # Person 1 moves to another split (a new split seed): not a change. Person 2's label changes.
    second = task_people(*write_labels(tmp_path / "n2", [(1, 0, False), (1, 5, True), (2, 0, True)],
                                       {1: "held_out", 2: "held_out"}))
    assert second["digest"].tolist()[0] == first["digest"].tolist()[0]
    assert second["digest"].tolist()[1] != first["digest"].tolist()[1]
    # Person 2 has as many label rows as before (no cohort count moves); the flip moves the
    # event and non-event counts, groups of fewer than 11 rows here.
    assert changed_counts(second, first) == {"all": 0}


def test_a_temporal_split_puts_one_person_in_two_splits_and_counts_them_once(tmp_path):
    # A temporal split gives each prediction time its split: person 1's first two times
    # are train, the last two held-out.
    folder = tmp_path / "temporal"
    folder.mkdir()
    times = [datetime(2021, 1, 1 + 2 * k) for k in range(4)]
    labels = pd.DataFrame({"subject_id": [1] * 4 + [2] * 4, "prediction_time": times * 2,
                           "boolean_value": [False, False, False, True] + [False] * 4})
    labels.to_parquet(folder / "labels.parquet", index=False)
    splits = labels[["subject_id", "prediction_time"]].assign(split=["train", "train", "held_out", "held_out"] * 2)
    splits.to_parquet(folder / "splits.parquet", index=False)
    people = task_people(folder / "labels.parquet", folder / "splits.parquet")
    assert people[["subject_id", "split", "event_rows", "non_event_rows"]].values.tolist() == [
        [1, "held_out", 1, 1], [1, "train", 0, 2], [2, "held_out", 0, 2], [2, "train", 0, 2]]
    # One person changed is one, not once per prediction time (4 x 4 in a many-to-many merge).
    one = (people["subject_id"] == 1) & (people["split"] == "held_out")
    changed = people.assign(digest=people["digest"].where(people["subject_id"] != 1, 5),
                            event_rows=people["event_rows"].where(~one, 0))  # their last time is gone
    assert changed_people(changed, people) == 1
    # Their times moved, as many in each split: no count moves, no one counts.
    moved = people.assign(digest=people["digest"].where(people["subject_id"] != 1, 5))
    assert changed_people(moved, people) == 0


def test_changed_people_counts_arrivals_departures_and_changes():
    assert changed_people(people(100), people(100)) == 0
    assert changed_people(people(100, changed=(5, 6)), people(100)) == 2
    assert changed_people(people(99), people(100)) == 1  # one withdrew
    assert changed_people(people(100, start=3), people(100)) == 6  # 3 left, 3 arrived


def test_a_night_that_changed_1_to_10_people_is_held_until_11_have(tmp_path):
    ledger = PeopleLedger(tmp_path)
    assert ledger.check("a", people(100)) == {"held": False, "against": None, "compared": 0, "known": False, "task": None}
    ledger.record("a", people(100))
    # One person withdrew: held, and not entered.
    one_gone = ledger.check("b", people(99))
    assert one_gone["held"] and one_gone["against"] == ledger.entries()[0]["date"]
    assert "fewer than 11 people's records changed" in held_reason(one_gone) and "(the champion stays)" in held_reason(one_gone)
    assert one_gone["against"] not in held_reason(one_gone)  # the date stays at the site
    # Ten changed: still held. Eleven: published, and entered.
    assert ledger.check("c", people(100, changed=tuple(range(10))))["held"]
    assert ledger.check("d", people(100, changed=tuple(range(11))))["held"] is False
    ledger.record("d", people(100, changed=tuple(range(11))))
    # A night 12 people away from "d" but 1 away from "a" is held: every published night counts.
    night = people(100, changed=(50,))
    assert changed_people(night, people(100, changed=tuple(range(11)))) == 12
    assert ledger.check("e", night)["held"]
    # The very pull already published (a rerun) is known and may publish again.
    assert ledger.check("a", people(100)) == {"held": False, "against": None, "compared": 2, "known": True, "task": None}
    assert [e["pull"] for e in ledger.entries()] == ["a", "d"]

    # ... and its people table is never made (a call that makes it is not called).
    def unmade():
        raise AssertionError("a published pull's people table was made again")

    assert ledger.check("d", unmade)["known"]
    ledger.record("d", unmade)
    made = []
    assert not ledger.check("f", lambda: made.append(1) or people(100))["held"] and made == [1]


def cohort(spec: dict[str, tuple[int, int, int]], *, changed: set[int] = frozenset(), gone: set[int] = frozenset(),
           rows: int = 1) -> pd.DataFrame:
    """A task's people table: per split, (people with event rows only, non-event rows
    only, both), ``rows`` of each kind a person, ids numbered on; ``changed`` ids get
    another digest and one more row of each kind they have, ``gone`` ids are left out."""
    out, i = [], 0
    for split, (events, non_events, both) in spec.items():
        for kind, n in (((rows, 0), events), ((0, rows), non_events), ((rows, rows), both)):
            for _ in range(n):
                more = [k + (k > 0) for k in kind] if i in changed else list(kind)
                out.append((i, i * 7 + (1000 if i in changed else 0), split, *more))
                i += 1
    frame = pd.DataFrame(out, columns=["subject_id", "digest", "split", "event_rows", "non_event_rows"])
    return frame[~frame["subject_id"].isin(gone)].astype({"subject_id": "int64", "digest": "uint64"})


def test_a_task_counts_changed_people_by_outcome_and_split():
    # Train: 40 with an event, 300 without, 10 with both; held-out: 18 with an event, 60 without.
    spec = {"train": (40, 300, 10), "held_out": (18, 60, 0)}
    first = cohort(spec)
    # 80 people withdraw: 77 train people without an event (ids 40-116) and 3 held-out
    # people with one (350-352).
    gone = set(range(40, 117)) | {350, 351, 352}
    counts = changed_counts(cohort(spec, gone=gone), first)
    assert counts == {"all": 80, "event": 3, "held_out/event": 3, "train/event": 0,
                      "non_event": 77, "held_out/non_event": 0, "train/non_event": 77,
                      "held_out/rows": 3, "train/rows": 77}
    # A held-out split of fewer than 11 event rows on both nights is left out.
    small = {"train": (40, 300, 10), "held_out": (8, 60, 0)}
    counts = changed_counts(cohort(small, changed={350}), cohort(small))
    assert counts == {"all": 1, "event": 1, "train/event": 0, "non_event": 0, "held_out/non_event": 0,
                      "train/non_event": 0, "held_out/rows": 1, "train/rows": 0}
    # ... but not when its 8 people hold 16 event rows: the published counts are rows.
    counts = changed_counts(cohort(small, changed={350}, rows=2), cohort(small, rows=2))
    assert counts["held_out/event"] == 1
    # A person with event and non-event times counts in both groups.
    counts = changed_counts(cohort(spec, changed={40 + 300}), first)
    assert counts["train/event"] == 1 and counts["train/non_event"] == 1


def test_a_small_split_cannot_come_back_as_the_total_less_the_others():
    # Train 100 event people, tuning 20, held-out 8 (a group skipped: under 11 rows). One
    # held-out event person withdraws and 11 train event people gain a row: every single
    # split's group is 0 or 11+, but tuning + held-out (the total less train) moved by one.
    spec = {"train": (100, 300, 0), "tuning": (20, 60, 0), "held_out": (8, 60, 0)}
    first = cohort(spec)
    held_out_event = first.loc[(first["split"] == "held_out") & (first["event_rows"] > 0), "subject_id"].iloc[0]
    counts = changed_counts(cohort(spec, changed=set(range(11)), gone={held_out_event}), first)
    assert "held_out/event" not in counts and counts["train/event"] == 11 and counts["event"] == 12
    assert counts["held_out+tuning/event"] == 1 and counts["held_out+train/event"] == 12


def test_a_task_ledger_holds_its_night_and_says_so_without_the_group(tmp_path):
    spec = {"train": (40, 300, 10), "held_out": (18, 60, 0)}
    ledger = PeopleLedger(tmp_path, task="t2d_2y")
    ledger.record("n1", cohort(spec))
    check = ledger.check("n2", cohort(spec, gone={350, 351, 352}))
    assert check["held"] and check["task"] == "t2d_2y"
    reason = held_reason(check)
    assert reason.startswith("fewer than 11 of this task's people changed in one of the groups")
    assert "held-out" not in reason and "event" not in reason
    # Eleven held-out people with an event and eleven train people without changed: published.
    assert not ledger.check("n3", cohort(spec, changed=set(range(350, 361)) | set(range(50, 61))))["held"]
    assert (tmp_path / LEDGER_DIR / "t2d_2y" / "index.json").is_file()


def test_another_de_identification_holds_the_night_until_a_new_ledger_is_started(tmp_path):
    ledger = PeopleLedger(tmp_path)
    ledger.record("a", people(100), deid="k1/365")
    assert ledger.entries()[0]["deid"] == "k1/365"
    assert ledger.check("b", people(100, changed=tuple(range(20))), deid="k1/365")["held"] is False
    # Another secret renames everyone: all 100 "changed", which would let any night through.
    with pytest.raises(ValueError, match=r"the de-identification changed since a published night \(another secret or "
                                         r"date shift\).*echo \[\] > "):
        ledger.check("c", people(100, start=1000), deid="k2/365")


def test_a_ledger_once_kept_and_then_lost_holds_the_night(tmp_path):
    import shutil

    PeopleLedger(tmp_path).record("a", people(100))
    PeopleLedger(tmp_path, task="t2d_2y").record("a", cohort({"train": (40, 300, 10)}))
    assert json.loads((tmp_path / "published_people.json").read_text()) == ["site", "task:t2d_2y"]
    shutil.rmtree(tmp_path / LEDGER_DIR / "t2d_2y")
    with pytest.raises(ValueError, match=r"the people ledger is missing .*t2d_2y/index\.json\) although this site has "
                                         r"recorded in it"):
        PeopleLedger(tmp_path, task="t2d_2y").check("b", cohort({"train": (40, 300, 10)}))
    assert PeopleLedger(tmp_path, task="ckd3_2y").entries() == []  # a task never recorded starts afresh
    # Knowingly started again: an empty index.
    (tmp_path / LEDGER_DIR / "t2d_2y").mkdir()
    (tmp_path / LEDGER_DIR / "t2d_2y" / "index.json").write_text("[]")
    assert PeopleLedger(tmp_path, task="t2d_2y").check("b", cohort({"train": (40, 300, 10)}))["held"] is False


def test_the_ledger_keeps_the_latest_nights_and_fails_closed_when_broken(tmp_path):
    ledger = PeopleLedger(tmp_path, keep=2)
    for k, start in enumerate((0, 20, 40)):
        ledger.record(f"p{k}", people(100, start=start))
    assert [e["pull"] for e in ledger.entries()] == ["p1", "p2"]
    assert sorted(p.name for p in (tmp_path / LEDGER_DIR).glob("*.parquet")) == ["p1.parquet", "p2.parquet"]
    (tmp_path / LEDGER_DIR / "p1.parquet").unlink()
    with pytest.raises(ValueError, match=r"index\.json: names p1\.parquet, which is missing"):
        ledger.check("x", people(100))
    (tmp_path / LEDGER_DIR / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a people ledger index"):
        ledger.entries()
    (tmp_path / LEDGER_DIR / "index.json").write_text('[{"date": "2026-12-01", "file": "p2.parquet"}]')
    with pytest.raises(ValueError, match=r"not a people ledger index \(expected a list of \{pull, date, file\}"):
        ledger.entries()


def _omop_people(db: Path) -> dict[int, int]:
    """The demo site's person_id -> subject_id (its pseudonym under the public demo secret)."""
    from forewarn.records import deid

    with duckdb.connect(str(db)) as con:
        ids = [r[0] for r in con.sql("SELECT person_id FROM person ORDER BY person_id").fetchall()]
    subjects, _ = deid.pseudonymize(ids, deid.DeidConfig(deid.load_secret("small", demo=True)))
    return dict(zip(ids, subjects.tolist(), strict=True))


def _delete_people(db: Path, ids: list[int]) -> None:
    """Withdraw people (by person_id) from every table of an OMOP file."""
    with duckdb.connect(str(db)) as con:
        tables = [r[0] for r in con.sql("SELECT table_name FROM information_schema.columns WHERE column_name = 'person_id'").fetchall()]
        for table in tables:
            con.execute(f"DELETE FROM {table} WHERE person_id IN ({', '.join(map(str, ids))})")


def test_the_nightly_flow_holds_a_site_or_a_task_whose_people_barely_changed(tmp_path_factory, prefect_server):
    from forewarn.records.demo import SITES, generate_site, site_seed

    work = tmp_path_factory.mktemp("held-work")
    db = work / "site" / "omop.duckdb"
    generate_site(db, SITES["community"], 150, site_seed(5, "held"))
    original = db.read_bytes()
    pseudonyms = _omop_people(db)
    with flow_workdir(work, tmp_path_factory.mktemp("prefect-home")):
        from forewarn.flows.artifact import summary_markdown
        from forewarn.flows.nightly import PULLS_FILE, nightly
        from forewarn.flows.study import parse_study

        study = parse_study({"name": "held", "demo": True, "tasks": ["t2d_2y"],
                             "sites": [{"name": "small", "source": {"location": str(db)}}],
                             "models": {"n_jobs": 1, "search": {"trials": 0}},
                             "validation": {"designs": ["internal"]}}, base_dir=work)
        site = study.sites[0]
        (first,) = nightly(study)
        (labels,) = (site.workdir / "stages").glob("label-t2d_2y/*/labels/t2d_2y.parquet")
        splits = pd.read_parquet(labels.with_name("t2d_2y.splits.parquet")).set_index("subject_id")["split"]
        events = pd.read_parquet(labels).groupby("subject_id")["boolean_value"].any()
        outside = [p for p, s in pseudonyms.items() if s not in splits.index]
        quiet = {split: [p for p, s in pseudonyms.items() if s in splits.index and splits[s] == split and not events[s]]
                 for split in ("train", "tuning", "held_out")}
        assert len(outside) >= 10 and quiet["train"], quiet
        _delete_people(db, outside[:1])  # one person withdraws
        (second,) = nightly(study)
        # Ten more people withdraw, nine outside the task's cohort and one in it: the
        # pull has changed by 11 people, the task's cohort by one.
        _delete_people(db, outside[1:10] + quiet["train"][:1])
        (third,) = nightly(study)
        # The withdrawals are undone (the source restored): the first night's very data,
        # already published, publishes again. (11 or more people changed in every group is
        # the unit tests' case: a site of 150 has too few people in each.)
        db.write_bytes(original)
        (fourth,) = nightly(study)
    # The site is too small for a model (the first and last nights say so), but it pulled.
    assert first.status == "skipped" and fourth.status == "skipped"
    assert second.status == "held" and second.reason.startswith("fewer than 11 people's records changed since a night")
    assert third.status == "held" and third.reason.startswith("fewer than 11 of this task's people changed in one of")
    # The count itself is never given, nor the group: the only numbers are the rule's 11 and a date.
    for held in (second, third):
        assert re.findall(r"\d+", re.sub(r"\d{4}-\d{2}-\d{2}", "", held.reason)) == ["11", "11"]
    assert "0 held" in summary_markdown(study, [first]) and "1 held" in summary_markdown(study, [second])
    ledger = site.workdir / LEDGER_DIR
    # Both ledgers hold the first night only: on the third, the site's only task was held,
    # so nothing of that night left the site either; the fourth was the first again.
    assert len(json.loads((ledger / "index.json").read_text())) == 1
    assert len(json.loads((ledger / "t2d_2y" / "index.json").read_text())) == 1
    # The site-held second night did not enter the pull history that later reports compare with.
    # (the third night's pull, and the first's, pulled again on the fourth).
    assert len(json.loads((site.workdir / PULLS_FILE).read_text())) == 2


def test_exclusion_counts_are_groups_of_the_task_ledger(tmp_path, demo_network):
    # The attrition table publishes each exclusion step's times (prevalent cases among
    # them): a withdrawn prevalent person would show as one fewer. The label stage keeps
    # each step's times per subject, and the task's people table carries them.
    from forewarn.features.labels import label_dataset, load_task
    from forewarn.records.deid import DeidConfig, load_secret
    from forewarn.records.omop import pull_omop

    pull = pull_omop(demo_network["academic"], tmp_path / "pull", site="academic",
                     config=DeidConfig(load_secret("academic", demo=True)))
    labels = label_dataset(pull.events_dir, load_task("t2d_2y"), tmp_path / "labels")
    attrition = json.loads(labels.attrition_path.read_text())
    excluded = pd.read_parquet(labels.exclusions_path)
    sums = excluded.groupby("step")["times"].sum().to_dict()
    steps = [k for k in attrition if k not in ("candidates", "labelled", "positive")]
    assert {k: sums.get(k, 0) for k in steps} == {k: attrition[k]["times"] for k in steps}
    assert attrition["prevalent"]["times"] >= 11
    people = task_people(labels.labels_path, labels.splits_path)
    assert int(people.loc[people["split"] == "excluded:prevalent", "non_event_rows"].sum()) == attrition["prevalent"]["times"]
    assert int(people[~people["split"].str.startswith("excluded:")][["event_rows", "non_event_rows"]].sum().sum()) == (
        attrition["labelled"]["times"])
    # One prevalent case withdraws: only the exclusion groups move, by one.
    gone = int(people.loc[people["split"] == "excluded:prevalent", "subject_id"].iloc[0])
    counts = changed_counts(people[people["subject_id"] != gone], people)
    assert counts["excluded:prevalent"] == 1 and counts["candidates"] == 1
    # ... and every step's together (the candidates less the labelled), by one too.
    assert counts["excluded"] == 1
    assert counts["all"] == (1 if gone in set(people.loc[~people["split"].str.startswith("excluded:"), "subject_id"]) else 0)


def test_subgroup_levels_are_groups_of_the_task_ledger(tmp_path, demo_network):
    # The subgroup tables publish each held-out age band's and sex's rows, subjects and
    # events. The ledger reads the levels from the records as the evaluation reads them
    # from the feature matrix, and holds a night on which a few people changed level.
    from forewarn.evaluation.clinical import age_band
    from forewarn.evaluation.evaluate import demographics, label_demographics
    from forewarn.features.featurize import FeatureConfig, featurize
    from forewarn.features.labels import label_dataset, load_task
    from forewarn.records.deid import DeidConfig, load_secret
    from forewarn.records.omop import pull_omop

    pull = pull_omop(demo_network["academic"], tmp_path / "pull", site="academic",
                     config=DeidConfig(load_secret("academic", demo=True)))
    labels = label_dataset(pull.events_dir, load_task("t2d_2y"), tmp_path / "labels")
    table, splits, _ = labels.load()
    X, rows, columns = featurize(pull.events_dir, table, splits, tmp_path / "features", FeatureConfig(n_workers=1),
                                 codes_path=pull.codes_path).load()
    age, sex = demographics(X, columns)
    levels = label_demographics(pull.events_dir, labels.labels_path)
    key = ["subject_id", "prediction_time"]
    on_rows = rows[key].astype({"prediction_time": "datetime64[us]"}).merge(
        levels.astype({"prediction_time": "datetime64[us]"}), on=key, how="left")
    assert len(levels) == len(rows) == len(on_rows)
    assert on_rows["age_band"].tolist() == [b or "~" for b in age_band(age)]
    assert on_rows["sex"].tolist() == [s or "~" for s in sex]
    assert set(on_rows["sex"]) == {"F", "M"} and len(set(on_rows["age_band"])) >= 4
    assert on_rows["sex/F"].tolist() == ["F" if s == "F" else "~" for s in sex]

    # race and ethnicity: the audit's levels of the person, "~" where unrecorded
    from forewarn.evaluation.evaluate import audit_levels

    audit = audit_levels(pull.events_dir, rows["subject_id"]).set_index("subject_id")
    for column in ("race", "ethnicity"):
        assert on_rows[column].tolist() == audit[column].reindex(on_rows["subject_id"]).fillna("~").tolist()
    assert {"White", "Black or African American", "~"} <= set(on_rows["race"])
    assert not columns["code"].str.match(r"(?i)(race|ethnicity)//").any()

    people = task_people(labels.labels_path, labels.splits_path, levels)
    held = rows[rows["split"] == "held_out"].merge(on_rows, on=key)
    for column in ("age_band", "sex", "race", "ethnicity"):
        published = held.groupby(column)["boolean_value"].agg(["sum", "size"])
        for level, (events, size) in published.iterrows():
            mine = people[people["split"] == f"level:{column}={level}"]
            assert (int(mine["event_rows"].sum()), int(mine[["event_rows", "non_event_rows"]].sum().sum())) == (events, size)
    assert changed_counts(people, people) == dict.fromkeys(changed_counts(people, people), 0)
    # Five held-out people's birth years are corrected, which moves them to the next age
    # band: no label moved, but two bands' counts did, by five people's. (People with one
    # held-out time, all in the band: a task may draw several times per person.)
    band = "50-59"
    had = held.groupby("subject_id")["boolean_value"].any()
    times = held.groupby("subject_id").size()
    in_band = held.groupby("subject_id")["age_band"].agg(lambda b: bool((b == band).all()))
    whole = held.loc[held["subject_id"].map(in_band) & ~held["subject_id"].map(had), "subject_id"].drop_duplicates()
    quiet = whole[whole.map(times).eq(1)]
    movers = quiet.iloc[:5].tolist()
    corrected = levels.copy()
    corrected.loc[corrected["subject_id"].isin(movers), "age_band"] = "60-69"
    moved = task_people(labels.labels_path, labels.splits_path, corrected)
    counts = changed_counts(moved, people)
    assert counts[f"level:age_band={band}/rows"] == 5 and counts["level:age_band=60-69/non_event"] == 5
    assert counts.get(f"level:age_band={band}/event", 0) == 0
    assert {k: v for k, v in counts.items() if not k.startswith("level:age_band=")} == dict.fromkeys(
        (k for k in counts if not k.startswith("level:age_band=")), 0)
    ledger = PeopleLedger(tmp_path / "work", task="t2d_2y")
    ledger.record("night-1", people)
    assert ledger.check("night-2", moved)["held"]
    # A night entered before the ledger kept levels has none: only the splits are compared.
    old = PeopleLedger(tmp_path / "old", task="t2d_2y")
    old.record("night-1", task_people(labels.labels_path, labels.splits_path))
    assert not old.check("night-2", moved)["held"]
    # A night entered before the ledger kept race and ethnicity (session 41) has their
    # levels in no column: those are not compared (nothing of them was published to take
    # a difference from; a small race level's 1-10 people would otherwise hold every site
    # on its first night), while age band and sex still are.
    before = task_people(labels.labels_path, labels.splits_path, levels.drop(columns=["race", "ethnicity"]))
    assert not any(k.startswith(("level:race=", "level:ethnicity=")) for k in changed_counts(people, before))
    assert changed_counts(moved, before)[f"level:age_band={band}/rows"] == 5
    # ... and once both nights keep them, a person who moves between two races is counted
    mover = held.loc[held["race"] == "White", "subject_id"].iloc[0]
    recoded = levels.copy()
    recoded.loc[recoded["subject_id"] == mover, "race"] = "Black or African American"
    counts = changed_counts(task_people(labels.labels_path, labels.splits_path, recoded), people)
    assert counts["level:race=White/rows"] == 1 and counts["level:race=Black or African American/rows"] == 1
    # Eleven people (and so at least eleven rows) move: published.
    eleven = whole.iloc[:11].tolist()
    assert len(eleven) == 11
    corrected.loc[corrected["subject_id"].isin(eleven), "age_band"] = "60-69"
    assert not ledger.check("night-3", task_people(labels.labels_path, labels.splits_path, corrected))["held"]


def test_a_held_temporal_design_is_reported_as_not_published(tmp_path, demo_network, prefect_server):
    # The temporal design's split by time has its own ledger: a night three of its
    # people away from one it published is not published, and its row says so.
    from forewarn.features.labels import LabelSet, load_task
    from forewarn.flows.cache import StageCache
    from forewarn.flows.nightly import cross_validations, deid_fingerprint, pull_site, temporal_task
    from forewarn.flows.study import parse_study

    study = parse_study({"name": "temporal-held", "demo": True, "tasks": ["t2d_2y"],
                         "sites": [{"name": "academic", "source": {"location": str(demo_network["academic"])}}],
                         "models": {"n_jobs": 1, "search": {"trials": 0}},
                         "validation": {"designs": ["internal", "temporal"], "temporal_from": "2021-07-01"}},
                        base_dir=tmp_path)
    site, spec = study.sites[0], load_task("t2d_2y")
    cache = StageCache(site.workdir / "stages", site=site.name)
    pull = pull_site(site, True, cache)
    stage = temporal_task(site, pull, spec, study, cache)
    assert "skipped" not in stage.result
    labels = LabelSet(stage.dir, spec.name)
    people = task_people(labels.labels_path, labels.splits_path)
    assert {"train", "tuning", "held_out"} <= set(people["split"])
    # The published night had three more held-out people (they withdrew since).
    gone = pd.DataFrame({"subject_id": [-1, -2, -3], "digest": [1, 2, 3], "split": "held_out",
                         "event_rows": 0, "non_event_rows": 1}).astype({"digest": "uint64"})
    ledger = PeopleLedger(site.workdir, task="t2d_2y-temporal")
    ledger.record("an earlier night", pd.concat([people, gone], ignore_index=True), deid=deid_fingerprint(site, True))
    used = {site.name: []}
    (row,) = cross_validations(study, spec, site.name, {"pull": pull}, {}, {site.name: cache}, used)
    assert row["design"] == "temporal" and row["skipped"] is True
    assert row["note"].startswith("not published tonight: fewer than 11 of the temporal design's people changed")
    assert row["note"].endswith("The temporal validation is not published tonight; the task's other results are")
    assert "2021" not in row["note"] and [e["pull"] for e in ledger.entries()] == ["an earlier night"]
    assert [s.dir for s in used[site.name]] == [stage.dir]  # its stage is kept; nothing was logged


def test_a_site_whose_results_are_in_the_store_but_whose_ledger_is_gone_is_held(tmp_path, restore_tracking):
    # A work folder lost whole takes the ledger and its marker with it: the tracking
    # store, which holds what the site published, says the site should have one.
    from types import SimpleNamespace

    from forewarn.flows import tracking
    from forewarn.flows.nightly import people_gate
    from forewarn.flows.study import parse_study

    tracking.configure(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", str(tmp_path / "mlruns" / "artifacts"))
    study = parse_study({"name": "lost", "demo": True, "tasks": ["t2d_2y"],
                         "sites": [{"name": "small", "source": {"location": str(tmp_path / "none.duckdb")}},
                                   {"name": "other", "source": {"location": str(tmp_path / "none.duckdb")}}]},
                        base_dir=tmp_path)
    site, other = study.sites
    pull = SimpleNamespace(result=SimpleNamespace(out_dir=write_pull(tmp_path / "pull", [(1, 0, "LAB//A", 1.0)])),
                           digest="tonight")
    # Nothing published yet: a first night passes and enters its ledger.
    reason, enter = people_gate(site, pull, demo=True)
    assert reason == "" and not (site.workdir / LEDGER_DIR).exists()
    # The site's temporal run for the task is in the store (the other site's says nothing of this one's).
    tracking.start_site_run(experiment=tracking.experiment_name("t2d_2y"), site=site.name, run_name="x",
                            tags={"validation_design": "temporal"})
    assert tracking.published_from(site.name) and tracking.published_from(site.name, task="t2d_2y", design="temporal")
    assert not tracking.published_from(other.name) and not tracking.published_from(site.name, design="internal")
    reason, enter = people_gate(site, pull, demo=True)
    assert enter is None and reason.startswith("this site has published results (the tracking store holds them) "
                                               "but keeps no people ledger")
    assert str(site.workdir / LEDGER_DIR / "index.json") in reason
    assert people_gate(other, pull, demo=True)[0] == ""
    # The operator starts an empty ledger, knowingly: the night passes.
    (site.workdir / LEDGER_DIR).mkdir(parents=True)
    (site.workdir / LEDGER_DIR / "index.json").write_text("[]")
    reason, enter = people_gate(site, pull, demo=True)
    assert reason == "" and enter is not None
    enter()
    assert [e["pull"] for e in PeopleLedger(site.workdir).entries()] == ["tonight"]
