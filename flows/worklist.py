"""Each night's worklist at each site: every eligible person scored by the champion.

A model detects disease earlier only once it scores the people a clinic is about to see.
With ``worklist.enabled`` the nightly flow ends, at every site whose pull succeeded (a
site held by the people ledger included: its worklist never leaves it), by scoring each
person eligible for each task at their latest prediction time with the champion the
study prefers (``worklist.models``: the site's own, the network's or another site's),
exactly as
``forewarn score --eligible --by-risk`` does (``flows.score``): the champion's columns
made with its own feature settings, eligibility by the task definition its run recorded
(people already diagnosed, dead, or outside the population are left out), the calibrated
risk and the alert at the threshold the model was published with (none for a network
model or another site's) or at the study's ``worklist.alert_budget``.

The worklist is ``<workdir>/worklists/<study>/<task>.parquet`` (the MEDS prediction
schema, highest risk first) with ``<task>.json`` beside it (the model, the eligibility counts,
the alerts), tonight's new alerts in ``<task>.new.parquet`` (``new_alerts``: alerted on no
earlier night within ``worklist.new_alert_days``), the site's alert record in
``<task>.alerted.parquet`` and its scoring record in ``<task>.scored.parquet``, whose
follow-up against each night's pull (what became of the people scored: outcomes in the
task's window, the alerts' sensitivity, PPV and lead time) is the ``.json``'s
``followup``. All hold row-level or small counts of the site's own people: they stay at
the site, like the pull. Nothing of them goes to MLflow, the flow's Prefect logs or the
run's summary, which name the model and the file only: tonight's count of alerts against
last night's would tell who was diagnosed in between; so a worklist that fails says why
in ``<task>.error.json`` at the site, and the logs and summary name only the error's
kind. A worklist is a stage: an unchanged pull scored by the same champion is not scored
again. The folder holds tonight's worklists only: one of an earlier night is removed
when tonight has none of it (no champion, a failed pull or worklist, a task dropped or
worklists turned off), so that it cannot pass for tonight's.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import traceback
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from forewarn.evaluation.clinical import AGE_BANDS, calibration_in_brief
from forewarn.evaluation.evaluate import label_demographics
from forewarn.evaluation.metrics import point_metrics
from forewarn.evaluation.validation import local_calibrator
from forewarn.features import labels
from forewarn.features.labels import TaskSpec
from forewarn.flows import tracking
from forewarn.flows.cache import Stage, StageCache, key_of
from forewarn.flows.score import NoOneEligible, score
from forewarn.flows.study import SiteConfig, Study
from forewarn.records import schema

log = logging.getLogger("forewarn")

FOLDER = "worklists"


def champion_version(name: str) -> str | None:
    """The version registered model ``name``'s ``champion`` alias points to, or None
    when there is no such model or it has no champion. Any other error of the registry (a
    store that cannot be read, a refused request) is raised: it must not read as "no
    champion"."""
    import mlflow

    try:
        model = mlflow.MlflowClient().get_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = (model.aliases or {}).get("champion")
    return None if version is None else str(version)


@dataclass(frozen=True)
class Choice:
    """The champion that scores a worklist (None: none would), whose it is (``site``,
    ``network`` or ``other_sites``), why each model before it was passed over, and, for
    another site's, its external validation here (held-out metrics, AUROC keys absent when
    withheld) and, with ``worklist.recalibrate``, the calibrator that validation fitted on
    this site's tuning split (``tracking.run_recalibration``; None where it fitted
    none)."""

    model: tracking.RegisteredModel | None
    whose: str = ""
    passed: tuple[str, ...] = ()
    validation: dict[str, float] | None = None
    recalibration: dict | None = None


def worklist_model(study: Study, spec: TaskSpec, site: str) -> Choice:
    """The champion that scores ``site``'s worklist of ``spec``: the first of
    ``worklist.models`` with one (``other_sites``: the study's other sites in its order; a
    site's name: that site, unless it is ``site`` itself),
    resolved to its version (``tracking.registered_model``: a champion whose run did not
    finish is an error, not a reason to pass it over). A champion trained for another
    definition of the task (another study's, on a shared store, or before the study changed
    it) is passed over, and so is another site's that was not externally validated here
    (an external-validation run of that very model at this site; its metrics may be
    withheld)."""

    passed = []
    for entry in study.worklist.models:
        if entry in ("site", "network"):
            whose, owners = entry, [site if entry == "site" else tracking.NETWORK]
        else:  # other_sites, or one site by its name (the site itself is "site")
            whose = "other_sites"
            owners = [s.name for s in study.sites if s.name != site and entry in ("other_sites", s.name)]
        for owner in owners:
            name = tracking.registered_name(spec.name, owner)
            version = champion_version(name)
            if version is None:
                passed.append(f"{name} has no champion")
                continue
            model = tracking.registered_model(f"{name}/{version}")
            if model.task_digest != spec.digest():
                passed.append(f"{model.label} was trained for another definition of {spec.name}")
                continue
            validation = None
            if whose == "other_sites":
                key = tracking.version_train_key(name, version)
                run = tracking.external_run(spec.name, owner, site, key) if key else None
                if run is None:
                    passed.append(f"{model.label} has not been validated at {site}")
                    continue
                validation = dict(run.data.metrics)
                if study.worklist.recalibrate:  # the calibrator that very run fitted
                    return Choice(model, whose, tuple(passed), validation, tracking.run_recalibration(run))
            return Choice(model, whose, tuple(passed), validation)
    return Choice(None, "", tuple(passed))


def risks_text(recalibration: dict | None, model_site: str, recalibrate: bool) -> str:
    """Whose calibration another site's champion scores a worklist with, for its note:
    ``recalibration`` is ``Choice.recalibration`` (what its external validation here did),
    ``recalibrate`` the study's ``worklist.recalibrate``."""
    method = (recalibration or {}).get("method")
    if method == "shipped":
        return (f"its risks as calibrated at {model_site} (its validation here kept them: no calibrator fitted on "
                "this site's tuning split beat them)")
    if recalibration:
        return f"its risks recalibrated here ({method}, on this site's tuning split)"
    return f"its risks as calibrated at {model_site}" + (
        " (its validation here could not recalibrate: fewer than 11 tuning events or non-events)" if recalibrate else "")


def worklist_stage(spec: TaskSpec, pull: Stage, cache: StageCache, model: tracking.RegisteredModel,
                   study: Study, whose: str = "site", recalibration: dict | None = None) -> Stage:
    """Score the eligible people of ``pull`` with ``model`` into the stage's
    ``worklist.parquet`` (highest risk first) and ``summary.json``; keyed on the pull's
    content, the model's run and how alerts are set (and tonight's task, which a model
    registered before runs recorded theirs is scored with), so an unchanged night is not
    scored again. Another site's champion (``whose`` ``other_sites``) alerts only at the
    study's ``worklist.alert_budget``: its threshold was chosen at its own site; with
    ``recalibration`` (``Choice.recalibration``) its risks are those of the calibrator its
    external validation fitted here."""
    own_threshold, budget = whose != "other_sites", study.worklist.alert_budget
    key = key_of("worklist", {"model": model.name, "version": model.version, "run": model.run_id,
                              "task": spec.digest(), "tracking": tracking.current_uri(),
                              "own_threshold": own_threshold, "alert_budget": budget,
                              "recalibration": recalibration}, [pull.digest])

    def compute(out: Path) -> dict:
        with tempfile.TemporaryDirectory(prefix="forewarn-task-") as tmp:
            recorded = tracking.registered_task(model.run_id, Path(tmp))
        # the task its run recorded; one registered before runs kept it: tonight's (its digest is checked)
        summary = score(model.ref, pull.result.events_dir, None, out / "worklist.parquet",
                        task=None if recorded is not None else spec, eligible=recorded is not None,
                        codes_path=pull.result.codes_path, speed=study.features, by_risk=True,
                        own_threshold=own_threshold, alert_budget=budget,
                        calibrator=local_calibrator(recalibration))
        summary.pop("out")
        summary["whose"] = whose
        summary["recalibrated_here"] = None if recalibration is None else {
            "method": recalibration["method"], "run_id": recalibration["run_id"]}
        summary["scored_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        return {"predictions": out / "worklist.parquet", "summary": out / "summary.json"}

    return cache.run(f"worklist-{spec.name}", key, compute)


def folder_of(site: SiteConfig, study: Study) -> Path:
    """The study's worklists at the site: ``<workdir>/worklists/<study>/`` (a workdir two
    studies share keeps each one's apart)."""
    return site.workdir / FOLDER / study.name


def _write(dest: Path, write) -> None:
    partial = dest.with_name(dest.name + ".partial")
    try:
        write(partial)
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)


ALERTED = pa.schema([(schema.SUBJECT_ID, pa.int64()), ("first_alert_date", pa.date32()),
                     ("previous_alert_date", pa.date32()), ("last_alert_date", pa.date32())])


DATES = ("first_alert_date", "previous_alert_date", "last_alert_date")


def read_alerted(path: Path) -> dict[str, np.ndarray]:
    """The site's record of whom a task's worklists alerted (``ALERTED``: each person's
    first, previous and last night with an alert, by the site's own date; NaT where none),
    empty when there is none or it cannot be read (every alert is then new)."""
    try:
        table = pq.read_table(path)
        if not table.schema.equals(ALERTED, check_metadata=False):
            raise ValueError(f"{path}: not an alert record")
    except (OSError, ValueError, pa.ArrowException):
        table = ALERTED.empty_table()
    return {schema.SUBJECT_ID: table.column(schema.SUBJECT_ID).to_numpy().astype(np.int64),
            **{c: table.column(c).to_numpy(zero_copy_only=False).astype("datetime64[D]") for c in DATES}}


def alerted_table(record: dict[str, np.ndarray]) -> pa.Table:
    return pa.table({schema.SUBJECT_ID: record[schema.SUBJECT_ID],
                     **{c: pa.array(record[c], type=pa.date32(), from_pandas=True) for c in DATES}}, schema=ALERTED)


def new_alerts(record: dict[str, np.ndarray], alerted: np.ndarray, today: date,
               lookback_days: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The alert record with tonight's alerts (``alerted``: subject ids) entered, and which
    of them are new: alerted tonight, and on no earlier night within ``lookback_days``
    (their previous alert night before today); a new one's first alert night is tonight. A person already entered today keeps the
    nights before it, so a second run on the same night gives the same answer. Entries whose
    last alert is more than ``lookback_days`` old are dropped: they no longer matter."""
    day = np.datetime64(today, "D")
    ids = record[schema.SUBJECT_ID]
    first, previous, last = (record[c].copy() for c in DATES)
    known = np.isin(ids, alerted)
    again = known & (last != day)  # alerted on an earlier night, and tonight
    previous[again] = last[again]
    last[known] = day
    fresh = np.setdiff1d(np.unique(np.asarray(alerted, np.int64)), ids)
    nat = np.full(fresh.size, np.datetime64("NaT", "D"))
    ids, first = np.r_[ids, fresh], np.r_[first, np.full(fresh.size, day)]
    previous, last = np.r_[previous, nat], np.r_[last, np.full(fresh.size, day)]
    kept = (day - last) <= np.timedelta64(lookback_days, "D")
    order = np.argsort(ids[kept], kind="stable")
    out = {schema.SUBJECT_ID: ids[kept][order], "first_alert_date": first[kept][order],
           "previous_alert_date": previous[kept][order], "last_alert_date": last[kept][order]}
    tonight = np.isin(out[schema.SUBJECT_ID], alerted)
    gap = day - out["previous_alert_date"][tonight]
    new = out[schema.SUBJECT_ID][tonight][np.isnat(gap) | (gap > np.timedelta64(lookback_days, "D"))]
    out["first_alert_date"][np.isin(out[schema.SUBJECT_ID], new)] = day  # a new run of alerts starts tonight
    return out, new


SCORED = pa.schema([(schema.SUBJECT_ID, pa.int64()), (schema.PREDICTION_TIME, pa.timestamp("us")),
                    ("first_scored_date", pa.date32()), ("seen_until", pa.timestamp("us")),
                    (schema.PREDICTED_BOOLEAN_PROBABILITY, pa.float64()), ("model", pa.string()),
                    ("alerted", pa.bool_()), ("first_alert_date", pa.date32()),
                    ("alert_seen_until", pa.timestamp("us"))])


def read_scored(path: Path) -> tuple[pa.Table, str | None]:
    """The site's scoring record of a task (``SCORED``, see ``enter_scored``), empty when
    there is none; and why it is not one, where a file is there that is not a scoring
    record (not parquet, or other columns). A file that cannot be read for another reason
    (permissions, a failing disk) raises: its history must not be set aside for that."""
    if not path.exists():
        return SCORED.empty_table(), None
    try:
        table = pq.read_table(path)
    except pa.ArrowInvalid as exc:
        return SCORED.empty_table(), f"{type(exc).__name__}: {exc}"
    if not table.schema.equals(SCORED, check_metadata=False):
        return SCORED.empty_table(), f"its columns are not a scoring record's: {table.schema.names}"
    return table.replace_schema_metadata(None), None


def enter_scored(record: pa.Table, tonight: pa.Table, model: str, today: date, keep_days: int) -> pa.Table:
    """The scoring record with tonight's worklist (``tonight``, the prediction schema)
    entered. A (subject, prediction time) not in it yet is added with tonight's date, risk
    and ``model``, ``seen_until`` null (``follow_up`` fills it with tonight's pull's last
    event of the subject: what was known when it was shown) and tonight's alert decision
    (``alerted``; null where the worklist had none). One already in it keeps its first
    night, risk and model, so a rerun and a later champion change nothing shown before; but
    an alert on a later night counts: ``alerted`` is true from then on, ``first_alert_date``
    the first night it was, and ``alert_seen_until`` (null until ``follow_up`` fills it, as
    ``seen_until``) what was known that night. Entries first scored more than ``keep_days``
    before ``today`` are dropped first, so one still on tonight's list enters again as
    new. Sorted by subject and time."""
    key = [schema.SUBJECT_ID, schema.PREDICTION_TIME]
    old = record.to_pandas()
    age = (pd.Timestamp(today) - pd.to_datetime(old["first_scored_date"])).dt.days
    old = old[age.to_numpy() <= keep_days]
    now = (tonight.select([*key, schema.PREDICTED_BOOLEAN_PROBABILITY, schema.PREDICTED_BOOLEAN_VALUE]).to_pandas()
           .rename(columns={schema.PREDICTED_BOOLEAN_VALUE: "tonight"}))
    both = old.merge(now, on=key, how="outer", suffixes=("", "_tonight"), indicator=True)
    fresh = (both.pop("_merge") == "right_only").to_numpy()
    both.loc[fresh, "first_scored_date"] = today
    both.loc[fresh, "model"] = model
    both.loc[fresh, schema.PREDICTED_BOOLEAN_PROBABILITY] = both.loc[fresh, f"{schema.PREDICTED_BOOLEAN_PROBABILITY}_tonight"]
    tonight_alert = both.pop("tonight")
    decided = tonight_alert.notna().to_numpy()
    alerted_now = tonight_alert.fillna(False).astype(bool).to_numpy()
    before = both["alerted"].fillna(False).astype(bool).to_numpy()
    both.loc[alerted_now & ~before, "first_alert_date"] = today
    both["alerted"] = np.where(before | alerted_now, True, np.where(decided | both["alerted"].notna().to_numpy(),
                                                                     False, None))
    both = both.sort_values(key, kind="stable", ignore_index=True)
    return pa.Table.from_pandas(both[SCORED.names], schema=SCORED, preserve_index=False)


def _share(a: int, b: int) -> float | None:
    return a / (a + b) if a + b else None


def _two_by_two(resolved: pd.DataFrame) -> dict | None:
    """Alert against outcome over the resolved scorings with an alert decision (None
    when none has one: a worklist without alerts)."""
    decided = resolved[resolved["alerted"].notna()]
    if decided.empty:
        return None
    alert = decided["alerted"].astype(bool).to_numpy()
    event = (decided["status"] == "outcome").to_numpy()
    tp, fp, fn, tn = (int(((alert == a) & (event == e)).sum())
                      for a, e in ((True, True), (True, False), (False, True), (False, False)))
    return {"scorings": len(decided), "true_positive": tp, "false_positive": fp, "false_negative": fn,
            "true_negative": tn, "sensitivity": _share(tp, fn), "specificity": _share(tn, fp), "ppv": _share(tp, fp)}


def _group(part: pd.DataFrame) -> dict:
    """One subgroup's line: its scorings, alerts, resolved scorings and outcomes, the mean
    risk shown to the resolved ones (against their outcome rate: are the risks right for
    this group?), and the alerts' sensitivity and PPV there."""
    resolved = part[part["status"].isin(["outcome", "no_outcome"])]
    table = _two_by_two(resolved)
    decided = part["alerted"].notna()
    return {"scorings": len(part),
            "alerts": int(part.loc[decided, "alerted"].astype(bool).sum()) if decided.any() else None,
            "resolved": len(resolved), "with_outcome": int((resolved["status"] == "outcome").sum()),
            "mean_risk": float(resolved[schema.PREDICTED_BOOLEAN_PROBABILITY].mean()) if len(resolved) else None,
            "sensitivity": None if table is None else table["sensitivity"], "ppv": None if table is None else table["ppv"]}


SUBGROUPS = ("age_band", "sex", "race", "ethnicity")  # the follow-up's subgroup tables, as the evaluation's


def follow_up_summary(record: pa.Table, outcomes: pd.DataFrame, keep_days: int, horizon_days: int,
                      groups: pd.DataFrame | None = None) -> dict:
    """What became of the people the record scored (``outcomes``: ``labels.follow_up`` of
    its rows, in its order): how many scorings have each status, and, over the resolved
    ones (``outcome`` or ``no_outcome``), the outcome rate and the AUROC of the risks
    shown; over those with an alert decision, the 2x2 table of alert against outcome with
    sensitivity, specificity and PPV; the lead time, for each person with an alerted
    scoring whose outcome came in its window, from what was known when the alert was first
    shown (the later of the prediction time and ``alert_seen_until``) to the outcome, at
    their earliest such scoring; and, given ``groups`` (``age_band``, ``sex``, and where given ``race`` and
    ``ethnicity`` of each row, in its order, ``~`` where unknown), each level's scorings, alerts, outcomes, sensitivity and PPV: do
    the alerts reach each group's cases alike? Exact counts: it stays at the site."""
    frame = record.to_pandas().assign(status=outcomes["status"].to_numpy(), outcome_time=outcomes["outcome_time"].to_numpy())
    counts = frame["status"].value_counts()
    out = {"kept_days": keep_days, "scorings": len(frame), "people": int(frame[schema.SUBJECT_ID].nunique()),
           "first_scored_since": None if frame.empty else str(min(frame["first_scored_date"])),
           "status": {s: int(counts.get(s, 0)) for s in labels.FOLLOW_UP}, "models": sorted(frame["model"].unique())}
    if keep_days < horizon_days:
        out["note"] = (f"worklist.followup_days ({keep_days}) is shorter than the task's horizon ({horizon_days} days): "
                       "scorings are dropped before their window can close, so most can never resolve as no_outcome")
    resolved = frame[frame["status"].isin(["outcome", "no_outcome"])]
    y = (resolved["status"] == "outcome").to_numpy()
    auroc = point_metrics(y, resolved[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy())["auroc"] if len(y) else math.nan
    calibration = calibration_in_brief(y, resolved[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy())
    out["resolved"] = {"scorings": len(resolved), "with_outcome": int(y.sum()),
                       "outcome_rate": float(y.mean()) if len(y) else None,
                       "auroc": None if math.isnan(auroc) else auroc,
                       "mean_risk": calibration["mean_predicted"]} | {
        k: calibration[k] for k in ("observed_to_expected", "calibration_in_the_large", "calibration_slope")}
    out["alerts"] = _two_by_two(resolved)
    hits = frame[(frame["status"] == "outcome") & frame["alerted"].fillna(False).astype(bool)]
    t, seen = hits[schema.PREDICTION_TIME].to_numpy("datetime64[us]"), hits["alert_seen_until"].to_numpy("datetime64[us]")
    shown = np.where(np.isnat(seen), t, np.maximum(t, seen))  # what was known when the alert was shown
    lead = (hits.assign(days=(hits["outcome_time"].to_numpy("datetime64[us]") - shown) // np.timedelta64(1, "D"))
            .groupby(schema.SUBJECT_ID)["days"].max().to_numpy())
    out["lead_time_days"] = None if not lead.size else {
        "people": int(lead.size), "median": float(np.median(lead)), "q1": float(np.percentile(lead, 25)),
        "q3": float(np.percentile(lead, 75)), "min": int(lead.min()), "max": int(lead.max())}
    if groups is not None:
        order = {level: i for i, level in enumerate((*AGE_BANDS, "F", "M", "~"))}
        out["subgroups"] = {
            column: {level: _group(frame[values == level])
                     for level in sorted(pd.unique(values), key=lambda v: (order.get(v, len(order)), v))}
            for column in SUBGROUPS if column in groups for values in [groups[column].to_numpy(object)]}
    return out


def rate_note(summary: dict) -> str:
    """For the run's summary: that a worklist's threshold alerts far more, or far fewer, of
    its people than it was set to (``score.alert_rate``), or nothing. No count or rate: only
    the direction leaves the site."""
    rate = summary.get("alert_rate") or {}
    if not rate.get("far"):
        return ""
    return (f"; its threshold alerts far {'more' if rate['ratio'] > 1 else 'fewer'} of these people than it was set "
            "to (see the .json)")


def calibration_note(resolved: dict) -> str:
    """What the follow-up's calibration says, in words, once there are outcomes enough to
    judge it (11 or more resolved with the outcome and without): risks that run high or
    low by a quarter or more (observed/expected outside 0.8-1.25), or too extreme or too
    moderate (slope outside 0.8-1.25); else nothing."""
    n, events = resolved["scorings"], resolved["with_outcome"]
    if events < 11 or n - events < 11:
        return ""
    said = []
    oe, slope = resolved.get("observed_to_expected"), resolved.get("calibration_slope")
    if oe is not None and not 0.8 <= oe <= 1.25:
        said.append(f"ran {'low' if oe > 1 else 'high'}")
    if slope is not None and not 0.8 <= slope <= 1.25:
        said.append(f"were too {'moderate' if slope > 1 else 'extreme'}")
    return f": the risks shown {' and '.join(said)}" if said else ""


def _n(value) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:.3f}"


def describe(summary: dict) -> list[str]:
    """A published worklist's ``.json`` in lines for the site's own console (``forewarn
    worklist``): the list, its alerts and its follow-up, with exact counts. For the site's
    eyes only, like the file."""
    alerts = ("no alerts" if summary.get("alerts") is None
              else f"{summary['alerts']:,} alerts at the budget of {summary['alert_budget']:g} per 1,000"
              if summary.get("alerts_by") == "budget"
              else f"{summary['alerts']:,} alerts at the threshold {summary['threshold']:.4f}")
    new = summary.get("new_alerts")
    lines = [f"{summary['rows']:,} people, {alerts}"
             + (f" ({new['new']:,} new: none in the {new['lookback_days']} days before)" if new else "")
             + f"; scored by {summary['model']} ({summary.get('whose', 'site')}'s), published {summary['published_at']}"]
    rate = summary.get("alert_rate")
    if rate and rate["far"]:
        lines.append(f"the threshold alerts {rate['rows']:.1%} of the list, against the {rate['set_for']:.1%} of its "
                     "tuning rows it was set to alert: the list's people are unlike those it was set on, so the "
                     "report's sensitivity and PPV do not hold here (worklist.alert_budget sets the number of alerts; the "
                     "follow-up's calibration, once scorings resolve, says whether the risks themselves do)")
    f = summary.get("followup")
    if f is None:
        return lines
    if "error" in f:
        return [*lines, f"follow-up failed: {f['error']}: {f.get('reason', '')}"]
    status = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in f["status"].items() if v)
    lines.append(f"follow-up of {f['scorings']:,} scorings of {f['people']:,} people since {f['first_scored_since']} "
                 f"(kept {f['kept_days']:,} days): {status or 'none'}")
    if f.get("note"):
        lines.append(f"  note: {f['note']}")
    r, a = f["resolved"], f["alerts"]
    lines.append(f"  resolved {r['scorings']:,} (outcome in the window or followed through the horizon without it): "
                 f"{r['with_outcome']:,} with the outcome, rate {_n(r['outcome_rate'])}, AUROC of the risks shown "
                 f"{_n(r['auroc'])}")
    if r["scorings"]:
        lines.append(f"  risks shown to them: mean {_n(r['mean_risk'])} against the outcome rate "
                     f"{_n(r['outcome_rate'])} (observed/expected {_n(r['observed_to_expected'])}), calibration in the "
                     f"large {_n(r['calibration_in_the_large'])}, slope {_n(r['calibration_slope'])}"
                     + calibration_note(r))
    if a is not None:
        lines.append(f"  alerts against outcomes: {a['true_positive']:,} true and {a['false_positive']:,} false "
                     f"alerts, {a['false_negative']:,} missed, {a['true_negative']:,} rightly not alerted; sensitivity "
                     f"{_n(a['sensitivity'])}, specificity {_n(a['specificity'])}, PPV {_n(a['ppv'])}")
    lead = f.get("lead_time_days")
    if lead is not None:
        lines.append(f"  lead time, earliest alerted prediction time to the outcome: median {lead['median']:g} days "
                     f"(quartiles {lead['q1']:g}-{lead['q3']:g}, range {lead['min']:,}-{lead['max']:,}) over "
                     f"{lead['people']:,} people")
    for column, levels in (f.get("subgroups") or {}).items():
        parts = [f"{level} {g['scorings']:,} scored, {_n(g['alerts'])} alerted, {g['with_outcome']:,} outcomes of "
                 f"{g['resolved']:,} resolved (mean risk {_n(g['mean_risk'])}), sensitivity {_n(g['sensitivity'])}, "
                 f"PPV {_n(g['ppv'])}" for level, g in levels.items()]
        lines.append(f"  by {column.replace('_', ' ')}: " + "; ".join(parts))
    return lines


def publish_locally(folder: Path, spec: TaskSpec, stage: Stage, extra: dict | None = None, *,
                    lookback_days: int = 30, today: date | None = None, events_dir: Path | None = None,
                    followup_days: int = 1095) -> tuple[list[Path], str | None]:
    """Copy the stage's worklist to ``folder/<task>.parquet``, with tonight's new alerts
    (``new_alerts``: alerted on no earlier night within ``lookback_days``) in
    ``<task>.new.parquet`` and the site's alert record in ``<task>.alerted.parquet``, then
    ``.json`` with the night it was published, the new and repeated alerts and ``extra``
    (each replaced whole, the summary last, so a summary never describes another list).
    A worklist without alerts (no threshold, no budget) has no new alerts and leaves the
    record as it is. With ``events_dir`` (tonight's pull), once the worklist is out,
    tonight's scorings enter the site's scoring record ``<task>.scored.parquet`` (kept
    ``followup_days``) and the summary's ``followup`` says what the pull shows became of
    every scoring in it (``follow_up``); one that fails is ``followup.error`` (its kind,
    reason and traceback, in the summary at the site). Returns the paths written and the
    kind of error of a follow-up that failed (None when none did)."""
    folder.mkdir(parents=True, exist_ok=True)
    parquet, new, summary, alerted_path, scored_path = (folder / f"{spec.name}{suffix}" for suffix in (
        ".parquet", ".new.parquet", ".json", ".alerted.parquet", ".scored.parquet"))
    today = today or datetime.now(UTC).date()
    tonight = pq.read_table(stage.result["predictions"])
    record = json.loads(Path(stage.result["summary"]).read_text())
    summary.unlink(missing_ok=True)
    written = [parquet, summary]
    if record.get("alerts") is None:  # no alert is possible: nothing is new, the record stands
        counts = None
        new.unlink(missing_ok=True)
    else:
        frame = tonight.select([schema.SUBJECT_ID, schema.PREDICTED_BOOLEAN_VALUE]).to_pandas()
        ids = frame.loc[frame[schema.PREDICTED_BOOLEAN_VALUE].fillna(False).astype(bool), schema.SUBJECT_ID].to_numpy()
        entered, fresh = new_alerts(read_alerted(alerted_path), ids, today, lookback_days)
        is_new = np.isin(tonight.column(schema.SUBJECT_ID).to_numpy(), fresh) & np.isin(
            tonight.column(schema.SUBJECT_ID).to_numpy(), ids)
        _write(new, lambda p: pq.write_table(tonight.filter(pa.array(is_new)), p))
        _write(alerted_path, lambda p: pq.write_table(alerted_table(entered), p))
        counts = {"lookback_days": lookback_days, "new": int(is_new.sum()), "repeated": int(len(ids) - is_new.sum())}
        written += [new, alerted_path]
    _write(parquet, lambda p: shutil.copyfile(stage.result["predictions"], p))
    followup, failed = None, None
    if events_dir is not None:
        try:  # the worklist is out already: a follow-up that fails takes nothing of it back
            followup = follow_up(scored_path, tonight, record["model"], spec, events_dir, today, followup_days)
            written.append(scored_path)
        except Exception as exc:  # noqa: BLE001 - said in the summary at the site, and the night fails
            failed = type(exc).__name__
            followup = {"error": failed, "reason": str(exc), "traceback": "".join(traceback.format_exception(exc))}
            written.append(scored_path)  # whatever is there is kept for the next night
    record |= (extra or {}) | {"published_at": datetime.now(UTC).isoformat(timespec="seconds"), "new_alerts": counts,
                               "followup": followup}
    _write(summary, lambda p: p.write_text(json.dumps(record, indent=1)))
    return written, failed


def follow_up(path: Path, tonight: pa.Table, model: str, spec: TaskSpec, events_dir: Path, today: date,
              keep_days: int) -> dict:
    """Enter tonight's worklist in the scoring record at ``path`` (``enter_scored``),
    follow every scoring in it up against tonight's pull (``labels.follow_up``, whose
    ``seen_until`` of tonight's new scorings is kept in the record) and summarise
    (``follow_up_summary``, with each row's age band and sex). A file there that is not a
    scoring record is set aside as ``<name>.unreadable-<time>``, never overwritten, and
    the summary's ``note`` says so."""
    old, problem = read_scored(path)
    notes = []
    if problem is not None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        aside = next(a for n in range(1000) for a in [path.with_name(f"{path.name}.unreadable-{stamp}"
                                                                    + (f"-{n}" if n else ""))] if not a.exists())
        path.rename(aside)
        notes.append(f"the scoring record could not be read ({problem}); it was set aside as {aside.name} and a "
                     "new one begun tonight")
    scored = enter_scored(old, tonight, model, today, keep_days)
    frame = scored.to_pandas()
    alerted = frame["alerted"].fillna(False).astype(bool).to_numpy()
    # an alerted scoring is judged from what was known on the night of its first alert
    seen = np.where(alerted, frame["alert_seen_until"].to_numpy("datetime64[us]"),
                    frame["seen_until"].to_numpy("datetime64[us]"))
    outcomes = labels.follow_up(events_dir, spec, frame[schema.SUBJECT_ID].to_numpy(),
                                frame[schema.PREDICTION_TIME].to_numpy("datetime64[us]"), seen)
    last = outcomes["last_time"].to_numpy("datetime64[us]")
    for column, rows in (("seen_until", np.ones(len(frame), bool)), ("alert_seen_until", alerted)):
        values = frame[column].to_numpy("datetime64[us]", copy=True)
        fill = rows & np.isnat(values)  # tonight's new scorings and first alerts: tonight's pull is what was known
        values[fill] = last[fill]
        scored = scored.set_column(SCORED.get_field_index(column), SCORED.field(column), pa.array(values, pa.timestamp("us")))
    _write(path, lambda p: pq.write_table(scored, p))
    groups = label_demographics(events_dir, path)  # in the record's order (subject, time)
    if not np.array_equal(groups[schema.SUBJECT_ID].to_numpy(), scored.column(schema.SUBJECT_ID).to_numpy()):
        raise RuntimeError(f"{path}: the subgroups of its rows came back in another order")
    summary = follow_up_summary(scored, outcomes, keep_days, spec.horizon_days, groups)
    if notes:
        summary["note"] = "; ".join([*notes, *([summary["note"]] if "note" in summary else [])])
    return summary


def record_error(folder: Path, spec: TaskSpec, exc: BaseException) -> Path:
    """The whole reason (and traceback) a worklist failed, or why no one was eligible,
    in ``folder/<task>.error.json`` at the site: its text may count the site's people,
    so only its kind leaves."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.name}.error.json"
    _write(path, lambda p: p.write_text(json.dumps({
        "task": spec.name, "error": type(exc).__name__, "reason": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "at": datetime.now(UTC).isoformat(timespec="seconds")}, indent=1)))
    return path


OWN = tuple(f"{kind}{partial}" for kind in (".parquet", ".new.parquet", ".alerted.parquet", ".scored.parquet", ".json",
                                            ".error.json")
            for partial in ("", ".partial"))


def sweep(folder: Path, keep: set[Path]) -> tuple[set[str], dict[str, str]]:
    """Remove the worklist files of ``folder`` (the study's) but ``keep``; files of other
    names, and the scoring records (``<task>.scored.parquet``: years of follow-up, kept
    even with worklists off), are left alone. Returns the tasks whose worklist (not an error record) was
    removed, and the kind of error of each task's file that could not be."""
    removed, stuck = set(), {}
    if not folder.is_dir():
        return removed, stuck
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in sorted(OWN, key=len, reverse=True) if path.name.endswith(s)), None)
        if suffix is None or suffix == ".scored.parquet" or not path.is_file() or path in keep:
            continue  # a scoring record is years of follow-up: never removed
        task = path.name[: -len(suffix)]
        try:
            path.unlink()
        except OSError as exc:
            stuck[task] = type(exc).__name__
            continue
        if suffix == ".parquet":  # the worklist itself (not its new alerts, summary or error record)
            removed.add(task)
    return removed, stuck


def _error_note(folder: Path, spec: TaskSpec, exc: BaseException, keep: set[Path]) -> str:
    """Where the reason of ``exc`` is kept at the site (``record_error``), or that it
    could not be written; never the reason itself."""
    try:
        recorded = record_error(folder, spec, exc)
    except OSError as failed:
        return f"its reason could not be written at the site ({type(failed).__name__})"
    keep.add(recorded)
    return f"the reason is in {recorded} at the site"


def worklists(study: Study, specs: list[TaskSpec], pulls: dict[str, Stage], caches: dict[str, StageCache],
              used: dict[str, list[Stage]], logger) -> dict[tuple[str, str], tuple[str, bool]]:
    """With ``worklist.enabled``, every site's worklist of every task (``worklist_stage``),
    after the night's promotions, for each site in ``pulls``. Returns per (site, task) a
    line for the run's summary (the file and the model, or why there is none; never a
    count) and whether it failed. A site or task without a champion, or where no one is
    eligible, has no worklist (not a failure); one that fails to be made is, and the others
    go on. Then each site's folder of the study is swept of what tonight did not write
    (``sweep``; with worklists off too); a file that cannot be removed is a failure."""
    notes: dict[tuple[str, str], tuple[str, bool]] = {}
    keep: dict[str, set[Path]] = {s.name: set() for s in study.sites}
    for site in study.sites:
        name, folder = site.name, folder_of(site, study)
        if study.worklist.enabled:  # whom each task alerted outlasts a night without a worklist
            keep[name].update(folder / f"{spec.name}.alerted.parquet" for spec in specs)
        for spec in specs if study.worklist.enabled else []:
            if name not in pulls:
                notes[name, spec.name] = ("no worklist: the site's pull failed tonight", False)
                continue
            try:
                choice = worklist_model(study, spec, name)
                model, whose, passed = choice.model, choice.whose, choice.passed
                if model is None:
                    notes[name, spec.name] = (f"no worklist: {'; '.join(passed)}", False)
                    continue
                stage = worklist_stage(spec, pulls[name], caches[name], model, study, whose, choice.recalibration)
                used[name].append(stage)
                # another site's model: its external validation here, as tonight's store has it
                here = {} if whose != "other_sites" else {"validated_here": choice.validation}
                written, followup_failed = publish_locally(folder, spec, stage, here,
                                                           lookback_days=study.worklist.new_alert_days,
                                                           events_dir=pulls[name].result.events_dir,
                                                           followup_days=study.worklist.followup_days)
                keep[name].update(written)
            except NoOneEligible as exc:  # not a failure: tonight there is no one to score
                where = _error_note(folder, spec, exc, keep[name])
                notes[name, spec.name] = (f"no worklist: no one at the site is eligible for {spec.name} tonight "
                                          f"({where.replace('reason is', 'counts are')})", False)
                continue
            except Exception as exc:  # noqa: BLE001 - the other worklists go on; the run ends Failed
                # the exception's text may count the site's people: only its kind leaves
                notes[name, spec.name] = (f"worklist failed ({type(exc).__name__}); "
                                          f"{_error_note(folder, spec, exc, keep[name])}", True)
                continue
            owner = {"site": "", "network": ", the network's",
                     "other_sites": f", {model.site}'s, validated here: held-out AUROC "
                                    f"{tracking.auroc_text(choice.validation or {})}; "
                                    + risks_text(choice.recalibration, model.site, study.worklist.recalibrate)}[whose]
            alerts = (f"; alerts at {study.worklist.alert_budget:g} per 1,000" if study.worklist.alert_budget
                      else f"; no alerts: its threshold was set at {model.site}" if whose == "other_sites" else "")
            alerts += rate_note(json.loads(Path(stage.result["summary"]).read_text()))
            also = f"; {'; '.join(passed)}" if passed else ""
            notes[name, spec.name] = (f"worklist: {folder / f'{spec.name}.parquet'} (scored by {model.label}{owner}"
                                      f"{alerts}{also})" + (f"; its follow-up failed ({followup_failed}): the reason "
                                                            f"is in {folder / f'{spec.name}.json'} at the site"
                                                            if followup_failed else ""), followup_failed is not None)
            if stage.hit:
                logger.info("site %s, task %s: worklist unchanged since an earlier night", name, spec.name)
    for site in study.sites:
        removed, stuck = sweep(folder_of(site, study), keep[site.name])
        for task in sorted(removed | set(stuck)):
            note, failed = notes.get((site.name, task), ("no worklist: worklists are off or the task is not the "
                                                          "study's tonight", False))
            if task in stuck:
                note, failed = f"{note}; an earlier night's file of it could not be removed ({stuck[task]})", True
            else:
                note = f"{note}; the earlier night's worklist was removed"
            notes[site.name, task] = (note, failed)
    for (name, task), (note, failed) in sorted(notes.items()):
        (logger.error if failed else logger.info)("site %s, task %s: %s", name, task, note)
    return notes
