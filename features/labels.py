"""Early-detection task definitions (YAML data) and the labels they give.

A task says who is eligible at which prediction times, how far ahead the outcome
must lie (``gap_days``, the lead time) and for how long we look for it
(``horizon_days``, measured from the prediction time). For a prediction time ``t``
and the subject's first outcome event ``o``:

- ``o <= t``: prevalent case, excluded (the washout is the whole prior record);
- ``t < o < t + gap``: outcome inside the lead-time gap, excluded;
- ``t + gap <= o <= t + horizon``: positive, when the subject is observed through
  ``t + horizon`` (their last event, or observation-period end, is at or after it) or a
  death ended their record (``follow_up: everyone``, the default; ``negatives`` keeps
  every positive);
- no outcome by ``t + horizon`` and the subject observed through ``t + horizon``:
  negative;
- otherwise censored (lost to follow-up, the data's end, or died first), excluded.

Why positives too: a time within a horizon of the end of a subject's record can only be
labelled positive if positives need no follow-up, so the last years of the data would
hold positives only, and whatever marks them (a long history, recent tests) would read
as risk. A worklist scores exactly those latest times: on the demo network cut at a date,
the community site's T2D threshold alerted 28% of its worklist instead of 5%, with a
PPV of 0.06 two years on (``benchmarks/prospective.py``, RESULTS "Session 33"). ACES
configs that require an event after the target window do the same, except that they drop
a positive whose record a death ended. What remains: a time within a horizon of the
data's end can still be labelled positive when the person died, for an outcome that kills
within its horizon (the pull cannot tell the data's end in each person's shifted time).

Labels only read the future; features at ``t`` read only events with time ``<= t``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from forewarn.records import schema
from forewarn.records.config import Strict, explain
from forewarn.records.progress import stage

DAY_US = 86_400 * 1_000_000
YEAR_DAYS = 365.25
BUILTIN_TASKS = "forewarn.features.tasks"


class Population(Strict):
    min_age_years: float = Field(18, ge=0, le=120)
    max_age_years: float = Field(120, ge=0, le=130)
    min_prior_observation_days: int = Field(365, ge=0)

    @model_validator(mode="after")
    def _ages(self) -> Population:
        if self.min_age_years > self.max_age_years:
            raise ValueError(
                f"min_age_years must be <= max_age_years; got {self.min_age_years} > {self.max_age_years}."
            )
        return self


class PredictionTimes(Strict):
    """Where candidate prediction times come from: exactly one of the three."""

    at_codes: list[str] | None = Field(None, min_length=1, description="every event time of these codes (e.g. visits)")
    every_days: int | None = Field(None, gt=0, description="every N days from the first eligible day to the last event")
    at_first_of: list[str] | None = Field(None, min_length=1, description="the first event of any of these codes (a trigger)")
    max_per_subject: int = Field(1, ge=1)
    seed: int = 0
    sample_from: Literal["eligible", "population"] = Field(
        "eligible",
        description=(
            "where max_per_subject's draw is made. eligible: among the times that survive every exclusion, so each "
            "subject counts once whatever their time at risk; since a future case's times all lie before their onset, "
            "this enriches the outcome (about twice a cross-section's rate on the demo network). population: among the "
            "times that meet the population criteria (age, prior observation), before the exclusions that look at the "
            "outcome or the follow-up (prevalent, gap, censored, temporal cutoff), which then apply to the drawn times: "
            "subjects count in proportion to their times at risk, as on a worklist's night; fewer labelled times"
        ),
    )

    @model_validator(mode="after")
    def _one_source(self) -> PredictionTimes:
        given = [k for k in ("at_codes", "every_days", "at_first_of") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of at_codes, every_days, at_first_of; got {given or 'none'}.")
        return self


class ValueCriterion(Strict):
    """An outcome from measurements: ``times`` values beyond a threshold, the second at a
    later time than the first and at least ``min_days_apart`` after it (e.g. eGFR < 60
    twice, 90 days apart; HbA1c >= 6.5% confirmed by a second result). Give exactly one
    of ``below`` (<), ``above`` (>), ``at_most`` (<=) or ``at_least`` (>=)."""

    code: str
    below: float | None = None
    above: float | None = None
    at_most: float | None = None
    at_least: float | None = None
    times: int = Field(1, ge=1, le=2)
    min_days_apart: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _threshold(self) -> ValueCriterion:
        given = [k for k in _BOUNDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of below, above, at_most or at_least for {self.code!r}; got {given or 'none'}."
            )
        return self

    @property
    def bound(self) -> tuple[str, float]:
        """(the bound's name, its value), e.g. ``("at_least", 6.5)``."""
        key = next(k for k in _BOUNDS if getattr(self, k) is not None)
        return key, float(getattr(self, key))

    def sql(self) -> str:
        """The comparison as SQL on ``numeric_value``'s right side, e.g. ``>= 6.5``."""
        key, value = self.bound
        return f"{_BOUNDS[key][0]} {value!r}"

    def beyond(self, values: np.ndarray) -> np.ndarray:
        """Which values meet the bound (NaN never does)."""
        key, value = self.bound
        with np.errstate(invalid="ignore"):
            return _BOUNDS[key][1](values, value)


# name: (SQL operator, numpy comparison); the order is the order of the error message.
_BOUNDS = {
    "below": ("<", np.less),
    "above": (">", np.greater),
    "at_most": ("<=", np.less_equal),
    "at_least": (">=", np.greater_equal),
}


class Outcome(Strict):
    codes: list[str] = Field(default_factory=list, description="codes; a trailing * matches a prefix")
    values: list[ValueCriterion] = Field(default_factory=list, description="measurement criteria")

    @model_validator(mode="after")
    def _something(self) -> Outcome:
        if not self.codes and not self.values:
            raise ValueError("outcome needs codes, values or both.")
        return self


class TemporalSplit(Strict):
    """Train and tune on prediction times whose outcome window ends by ``held_out_from``
    (those before it whose horizon ends after it are excluded); hold out the times from
    it on."""

    held_out_from: datetime


class TaskSpec(Strict):
    """One early-detection task. Units are in the field names."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    description: str = Field(min_length=40)
    population: Population = Population()
    prediction_times: PredictionTimes
    gap_days: int = Field(ge=0)
    horizon_days: int = Field(gt=0)
    outcome: Outcome
    temporal_split: TemporalSplit | None = None
    follow_up: Literal["everyone", "negatives"] = Field(
        "everyone",
        description="whose record must run through the horizon for a label: everyone (a positive too, unless a death "
        "ended its record) or negatives only (PatientLevelPrediction's includeAllOutcomes: then the times within a "
        "horizon of the data's end are labelled only when positive, which biases a model towards whatever marks them)",
    )

    @model_validator(mode="after")
    def _window(self) -> TaskSpec:
        if self.gap_days >= self.horizon_days:
            raise ValueError(
                f"gap_days must be < horizon_days (the horizon is measured from the prediction time); "
                f"got gap_days={self.gap_days}, horizon_days={self.horizon_days}."
            )
        return self

    @field_validator("description")
    @classmethod
    def _describe(cls, value: str) -> str:
        needed = ["prediction time", "window", "label", "leak"]
        missing = [w for w in needed if w not in value.lower()]
        if missing:
            raise ValueError(
                f"description must state the prediction time, feature window, label, exclusions and "
                f"why the label cannot leak; it does not mention {missing}."
            )
        return value

    def digest(self) -> str:
        # follow_up "negatives" (the rule before the field existed) leaves the digest as it was, so a
        # task file that asks for it still names the models trained under it
        exclude: dict = {"follow_up": True} if self.follow_up == "negatives" else {}
        # likewise sample_from "eligible", the draw before the field existed
        if self.prediction_times.sample_from == "eligible":
            exclude["prediction_times"] = {"sample_from"}
        return hashlib.sha256(self.model_dump_json(exclude=exclude or None).encode()).hexdigest()[:16]


def builtin_tasks() -> list[str]:
    files = resources.files(BUILTIN_TASKS)
    return sorted(p.name.removesuffix(".yaml") for p in files.iterdir() if p.name.endswith(".yaml"))


def load_task(name_or_path: str | Path) -> TaskSpec:
    """A built-in task by name (``t2d_2y``) or a task YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"task file {str(path)!r} does not exist.")
        text, where = path.read_text(), str(path)
    else:
        candidate = resources.files(BUILTIN_TASKS) / f"{name_or_path}.yaml"
        if not candidate.is_file():
            raise ValueError(f"task must be a built-in task {builtin_tasks()} or a path to a .yaml file; got {str(name_or_path)!r}.")
        text, where = candidate.read_text(), f"built-in task {name_or_path}"
    return parse_task(yaml.safe_load(text), where=where)


def parse_task(data: object, *, where: str = "task") -> TaskSpec:
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{where} is not a valid task:\n{explain(exc, TaskSpec)}") from None


def code_predicate(codes: list[str], column: str = "code") -> str:
    """A SQL predicate matching ``codes`` (``X*`` is a prefix match), safely quoted."""
    parts = []
    for code in codes:
        quoted = code.rstrip("*").replace("'", "''")
        parts.append(f"starts_with({column}, '{quoted}')" if code.endswith("*") else f"{column} = '{quoted}'")
    return "(" + " OR ".join(parts) + ")" if parts else "false"


# The exclusion steps a prediction time's own date decides (not its outcome or follow-up).
POPULATION_STEPS = ("age", "prior_observation")
ATTRITION_STEPS = (
    ("candidates", "candidate prediction times"),
    ("age", "outside the age range"),
    ("prior_observation", "too little prior observation"),
    ("prevalent", "outcome at or before the prediction time (prevalent)"),
    ("in_gap", "outcome inside the lead-time gap"),
    ("censored", "not observed for the whole horizon (censored)"),
    ("crosses_cutoff", "before the temporal cutoff, with a horizon that ends after it"),
    ("sampled_out", "beyond max_per_subject"),
)


def build_labels(events_dir: Path, spec: TaskSpec) -> tuple[pa.Table, dict[str, dict[str, int]]]:
    """Labels (MEDS label schema, sorted by subject and time) and the attrition counts.

    The attrition dict maps each step to the prediction times and subjects it removed
    (``candidates`` counts what entered).
    """
    return _label_arrays(*_scan_events(events_dir, spec).candidates(spec), spec)


# ----------------------------------------------------------------------------- event scan
#
# Labels need, per subject, a handful of minima and maxima (birth, start of observation,
# last event, first outcome) and the candidate prediction times. ``_scan_events`` reads
# only subject_id, time and code (numeric_value only for measurement criteria), row
# group by row group, with codes kept dictionary-encoded: each predicate is evaluated
# once per distinct code and gathered by the dictionary indices, and the per-subject
# reductions are ``np.minimum.reduceat`` over subject runs. It gives exactly what
# ``candidates_sql`` (the DuckDB reference, kept for the tests) gives, without a
# DuckDB connection, a SQL plan or a hash aggregate; memory is bounded by a row group.

_NONE_MIN = np.iinfo(np.int64).max  # "no such event" while taking minima
_NAT = np.iinfo(np.int64).min  # null timestamp (and "no event" while taking maxima)


def _code_matcher(codes: list[str]):
    """A function from an Arrow string dictionary to a bool numpy mask (plus one False
    slot at the end, for null codes): exact codes and ``X*`` prefixes, as ``code_predicate``."""
    exact = pa.array([c for c in codes if not c.endswith("*")], pa.string())
    prefixes = [c[:-1] for c in codes if c.endswith("*")]

    def match(dictionary: pa.Array) -> np.ndarray:
        hit = np.zeros(len(dictionary) + 1, bool)
        if len(exact):
            hit[:-1] |= pc.is_in(dictionary, value_set=exact).to_numpy(zero_copy_only=False)
        for prefix in prefixes:
            hit[:-1] |= pc.fill_null(pc.starts_with(dictionary, prefix), False).to_numpy(zero_copy_only=False)
        return hit

    return match


@dataclass
class _Scan:
    """Per-subject aggregates (int64 microseconds; ``_NONE_MIN`` / ``_NAT`` when absent)
    and the raw candidate prediction times / measurement hits, before assembly."""

    subjects: np.ndarray  # sorted, unique
    birth: np.ndarray
    obs_start: np.ndarray
    first_other: np.ndarray  # first event that is not a birth (code not null)
    last: np.ndarray
    code_outcome: np.ndarray
    first_trigger: np.ndarray  # at_first_of only
    death: np.ndarray  # first death record
    value_outcomes: list[np.ndarray]  # one per spec.outcome.values, aligned with subjects
    at_code_subjects: np.ndarray
    at_code_times: np.ndarray

    def first_time(self) -> np.ndarray:
        return np.where(self.obs_start != _NONE_MIN, self.obs_start, self.first_other)

    def outcome(self) -> np.ndarray:
        out = self.code_outcome.copy()
        for v in self.value_outcomes:
            np.minimum(out, v, out=out)
        return out

    def candidates(self, spec: TaskSpec) -> tuple[np.ndarray, ...]:
        """(subject, prediction time, birth, first time, last time, outcome, death) per
        candidate, in (subject, time) order, null as ``_NAT``: the rows of
        ``candidates_sql``."""
        pt = spec.prediction_times
        first = self.first_time()
        if pt.at_codes is not None:
            subj, t = self.at_code_subjects, self.at_code_times
            pos = np.searchsorted(self.subjects, subj)
        elif pt.at_first_of is not None:
            pos = np.flatnonzero(self.first_trigger != _NONE_MIN)
            subj, t = self.subjects[pos], self.first_trigger[pos]
        else:
            has = np.flatnonzero(first != _NONE_MIN)
            begin = first[has] + spec.population.min_prior_observation_days * DAY_US
            step = pt.every_days * DAY_US
            span = self.last[has] - begin
            n = np.where(span >= 0, span // step + 1, 0)
            pos = np.repeat(has, n)
            k = np.arange(pos.size) - np.repeat(np.cumsum(n) - n, n)
            subj, t = self.subjects[pos], np.repeat(begin, n) + k * step

        def nat(a: np.ndarray) -> np.ndarray:
            return np.where(a == _NONE_MIN, _NAT, a)

        return (subj, t, nat(self.birth[pos]), nat(first[pos]), self.last[pos], nat(self.outcome()[pos]),
                nat(self.death[pos]))

    def outcome_frame(self) -> pd.DataFrame:
        out = self.outcome()
        has = out != _NONE_MIN
        return pd.DataFrame(
            {schema.SUBJECT_ID: self.subjects[has], "outcome_time": out[has].astype("datetime64[us]")}
        )


def _reduce_runs(subjects: np.ndarray, mins: list[np.ndarray], maxs: list[np.ndarray]):
    """Group equal neighbouring subjects (sorting first if needed): unique subjects, the
    minima of ``mins`` and maxima of ``maxs`` per subject."""
    if subjects.size > 1 and not (subjects[1:] >= subjects[:-1]).all():
        order = np.argsort(subjects, kind="stable")
        subjects = subjects[order]
        mins = [a[order] for a in mins]
        maxs = [a[order] for a in maxs]
    starts = _run_starts(subjects)
    if starts.size == subjects.size:
        return subjects, mins, maxs
    return (
        subjects[starts],
        [np.minimum.reduceat(a, starts) if a.size else a for a in mins],
        [np.maximum.reduceat(a, starts) if a.size else a for a in maxs],
    )


def _sorted_pairs(subjects: np.ndarray, times: np.ndarray, *, unique: bool) -> tuple[np.ndarray, np.ndarray]:
    """(subject, time) pairs in (subject, time) order, optionally without duplicates."""
    if subjects.size > 1:
        same, later = subjects[1:] == subjects[:-1], times[1:] >= times[:-1]
        if not ((subjects[1:] > subjects[:-1]) | (same & later)).all():
            order = np.lexsort((times, subjects))
            subjects, times = subjects[order], times[order]
        if unique:
            keep = np.ones(subjects.size, bool)
            keep[1:] = (subjects[1:] != subjects[:-1]) | (times[1:] != times[:-1])
            if not keep.all():
                subjects, times = subjects[keep], times[keep]
    return subjects, times


def _event_shards(events_dir: Path) -> list[Path]:
    shards = sorted(Path(events_dir).glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no MEDS event shards (*.parquet) in {str(events_dir)!r}.")
    return shards


def _as_us(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray | None]:
    """int64 microseconds and the valid mask (None when nothing is null)."""
    if not pa.types.is_timestamp(column.type) or column.type.unit != "us":
        tz = column.type.tz if pa.types.is_timestamp(column.type) else None
        column = column.cast(pa.timestamp("us", tz), safe=False)
    values, valid = [], []
    for chunk in column.cast(pa.int64()).chunks:
        # The value buffer as is (zero copy), nulls overwritten from the validity bitmap.
        data = np.frombuffer(chunk.buffers()[1], np.int64, len(chunk), chunk.offset * 8)
        if chunk.null_count:
            bits = np.frombuffer(chunk.buffers()[0], np.uint8)
            ok = np.unpackbits(bits, bitorder="little", count=chunk.offset + len(chunk))[chunk.offset :].view(bool)
            data = np.where(ok, data, _NAT)
        else:
            ok = None
        values.append(data)
        valid.append(ok)
    if not values:
        return np.zeros(0, np.int64), None
    if all(v is None for v in valid):
        return (values[0] if len(values) == 1 else np.concatenate(values)), None
    mask = np.concatenate([np.ones(len(d), bool) if v is None else v for d, v in zip(values, valid, strict=True)])
    return np.concatenate(values), mask


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """First position of each run of equal keys."""
    if sorted_keys.size == 0:
        return np.zeros(0, np.intp)
    return np.r_[0, np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1]


def _first_by_subject(subjects: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique subject, minimum time) of rows grouped by subject."""
    starts = _run_starts(subjects)
    if starts.size == subjects.size:
        return subjects, times
    return subjects[starts], np.minimum.reduceat(times, starts)


def _align(subjects: np.ndarray, pairs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per-subject values (``_NONE_MIN`` where absent) from (subject, value) pairs of
    several row groups: the minimum per subject."""
    s, t = pairs
    s, (t,), _ = _reduce_runs(s, [t], [])
    out = np.full(subjects.size, _NONE_MIN, np.int64)
    out[np.searchsorted(subjects, s)] = t
    return out


def _scan_events(events_dir: Path, spec: TaskSpec) -> _Scan:
    pt = spec.prediction_times
    # One bit per code predicate; each is evaluated on a row group's distinct codes and
    # all are gathered to the rows at once (one small integer per event).
    predicates = {"birth": [schema.BIRTH_CODE], "obs_start": [schema.OBSERVATION_START], "outcome": spec.outcome.codes,
                  "death": [schema.DEATH_CODE]}
    if pt.at_codes is not None:
        predicates["at_codes"] = pt.at_codes
    if pt.at_first_of is not None:
        predicates["trigger"] = pt.at_first_of
    for i, v in enumerate(spec.outcome.values):
        predicates[f"value{i}"] = [v.code]
    bit = {key: 1 << i for i, key in enumerate([*predicates, "code_valid"])}
    flag_type = np.uint8 if len(bit) <= 8 else np.uint32 if len(bit) <= 32 else np.uint64
    matchers = {key: _code_matcher(codes) for key, codes in predicates.items()}
    sparse_keys = [k for k in ("birth", "obs_start", "outcome", "death", "trigger") if k in predicates]
    columns = [schema.SUBJECT_ID, schema.TIME, schema.CODE] + ([schema.NUMERIC_VALUE] if spec.outcome.values else [])
    subject_parts: list[np.ndarray] = []
    last_parts: list[np.ndarray] = []
    other_parts: list[np.ndarray] = []
    sparse: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {k: ([], []) for k in [*sparse_keys, "at_codes"]}
    hits: list[tuple[list[np.ndarray], list[np.ndarray]]] = [([], []) for _ in spec.outcome.values]
    for shard in _event_shards(events_dir):
        pf = pq.ParquetFile(shard, read_dictionary=[schema.CODE])
        for rg in range(pf.metadata.num_row_groups):
            table = pf.read_row_group(rg, columns=columns)
            if table.num_rows == 0:
                continue
            subjects = table.column(schema.SUBJECT_ID).to_numpy().astype(np.int64, copy=False)
            time, valid = _as_us(table.column(schema.TIME))
            pieces = []
            for chunk in table.column(schema.CODE).chunks:
                if not pa.types.is_dictionary(chunk.type):
                    chunk = pc.dictionary_encode(chunk)
                n_dict = len(chunk.dictionary)
                per_code = np.zeros(n_dict + 1, flag_type)  # the last slot: a null code
                per_code[:-1] = bit["code_valid"]
                for key, match in matchers.items():
                    per_code[match(chunk.dictionary)] |= flag_type(bit[key])
                idx = chunk.indices
                pieces.append(per_code[(pc.fill_null(idx, n_dict) if idx.null_count else idx).to_numpy()])
            flags = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
            if valid is not None:  # events without a time take no part (as ``WHERE time IS NOT NULL``)
                flags[~valid] = 0
            values = None
            if spec.outcome.values:
                values = pc.fill_null(table.column(schema.NUMERIC_VALUE), np.nan).to_numpy()
            # Work on subject runs; sort only a row group that is not grouped by subject.
            if subjects.size > 1 and not (subjects[1:] >= subjects[:-1]).all():
                order = np.argsort(subjects, kind="stable")
                subjects, time, flags = subjects[order], time[order], flags[order]
                valid = None if valid is None else valid[order]
                values = None if values is None else values[order]
            starts = _run_starts(subjects)
            subject_parts.append(subjects[starts])
            last_parts.append(np.maximum.reduceat(time if valid is None else np.where(valid, time, _NAT), starts))
            # First event that is not a birth (and has a code): dense, so a masked reduceat.
            other = (flags & flag_type(bit["code_valid"] | bit["birth"])) == bit["code_valid"]
            other_parts.append(np.minimum.reduceat(np.where(other, time, _NONE_MIN), starts))
            # Sparse predicates: only their rows, still grouped by subject.
            for key in sparse:
                if key not in bit:
                    continue
                rows = np.flatnonzero(flags & flag_type(bit[key]))
                if key == "at_codes":
                    sparse[key][0].append(subjects[rows])
                    sparse[key][1].append(time[rows])
                else:
                    s_, t_ = _first_by_subject(subjects[rows], time[rows])
                    sparse[key][0].append(s_)
                    sparse[key][1].append(t_)
            for i, v in enumerate(spec.outcome.values):
                rows = np.flatnonzero(flags & flag_type(bit[f"value{i}"]))
                rows = rows[v.beyond(values[rows])]  # NaN is no measurement: never beyond a threshold
                hits[i][0].append(subjects[rows])
                hits[i][1].append(time[rows])

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    subjects, (first_other,), (last,) = _reduce_runs(cat(subject_parts), [cat(other_parts)], [cat(last_parts)])
    agg = {key: _align(subjects, (cat(sparse[key][0]), cat(sparse[key][1]))) for key in sparse_keys}
    # Measurement criteria: the first hit, or (times: 2) the first hit at a later time than
    # the subject's first hit and at least min_days_apart after it.
    value_outcomes = []
    for (hs, ht), v in zip(hits, spec.outcome.values, strict=True):
        hs, ht = _sorted_pairs(cat(hs), cat(ht), unique=False)
        per_subject = np.full(subjects.size, _NONE_MIN, np.int64)
        if hs.size:
            group, starts = _groups(hs)
            if v.times == 1:
                first_hit = ht[starts]
            else:
                first = ht[starts][group]
                ok = (ht > first) & (ht >= first + v.min_days_apart * DAY_US)
                first_hit = np.minimum.reduceat(np.where(ok, ht, _NONE_MIN), starts)
            per_subject[np.searchsorted(subjects, hs[starts])] = first_hit
        value_outcomes.append(per_subject)
    cand_s, cand_t = _sorted_pairs(cat(sparse["at_codes"][0]), cat(sparse["at_codes"][1]), unique=True)
    return _Scan(
        subjects=subjects,
        birth=agg["birth"],
        obs_start=agg["obs_start"],
        first_other=first_other,
        last=last,
        code_outcome=agg["outcome"],
        first_trigger=agg.get("trigger", np.zeros(0, np.int64)),
        death=agg["death"],
        value_outcomes=value_outcomes,
        at_code_subjects=cand_s,
        at_code_times=cand_t,
    )


def reference_candidates(events_dir: Path, spec: TaskSpec) -> pa.Table:
    """The candidate rows from DuckDB SQL (``candidates_sql``): the reference the
    NumPy scan is tested against."""
    con = duckdb.connect()
    try:
        return con.sql(candidates_sql(str(Path(events_dir) / "*.parquet"), spec)).to_arrow_table()
    finally:
        con.close()


def _outcome_sql(spec: TaskSpec) -> tuple[str, str, str]:
    """(extra CTEs, joins, outcome expression) for the first outcome time per subject:
    the earliest outcome code or measurement criterion."""
    criteria, joins, outcome_times = [], [], ["s.code_outcome"]
    for i, v in enumerate(spec.outcome.values):
        op = v.sql()
        code = v.code.replace("'", "''")
        hits = f"SELECT subject_id, time FROM ev WHERE code = '{code}' AND numeric_value {op}"
        if v.times == 1:
            criteria.append(f"v{i} AS (SELECT subject_id, min(time) AS t FROM ({hits}) GROUP BY subject_id)")
        else:
            criteria.append(
                f"v{i}_hits AS ({hits}), "
                f"v{i} AS (SELECT h.subject_id, min(h.time) AS t FROM v{i}_hits h "
                f"JOIN (SELECT subject_id, min(time) AS first_hit FROM v{i}_hits GROUP BY subject_id) f USING (subject_id) "
                f"WHERE h.time > f.first_hit AND h.time >= f.first_hit + INTERVAL {v.min_days_apart} DAY "
                "GROUP BY h.subject_id)"
            )
        joins.append(f"LEFT JOIN v{i} USING (subject_id)")
        outcome_times.append(f"v{i}.t")
    return "".join(f", {c}" for c in criteria), " ".join(joins), f"least({', '.join(outcome_times)})"


def _subjects_sql(events: str, spec: TaskSpec) -> str:
    return f"""
        WITH ev AS (SELECT subject_id, time, code{", numeric_value" if spec.outcome.values else ""}
                    FROM read_parquet('{events}') WHERE time IS NOT NULL),
        subj AS (
          SELECT subject_id,
                 min(time) FILTER (WHERE code = '{schema.BIRTH_CODE}') AS birth,
                 COALESCE(min(time) FILTER (WHERE code = '{schema.OBSERVATION_START}'),
                          min(time) FILTER (WHERE code <> '{schema.BIRTH_CODE}')) AS first_time,
                 max(time) AS last_time,
                 min(time) FILTER (WHERE code = '{schema.DEATH_CODE}') AS death,
                 min(time) FILTER (WHERE {code_predicate(spec.outcome.codes)}) AS code_outcome
          FROM ev GROUP BY subject_id)"""


def candidates_sql(events: str, spec: TaskSpec) -> str:
    """One row per candidate prediction time with the subject's birth, first and last
    observed time, first outcome time (codes or measurement criteria) and first death."""
    pt = spec.prediction_times
    ctes, joins, outcome = _outcome_sql(spec)
    if pt.at_codes is not None:
        cand = f"SELECT DISTINCT subject_id, time AS prediction_time FROM ev WHERE {code_predicate(pt.at_codes)}"
    elif pt.at_first_of is not None:
        cand = f"SELECT subject_id, min(time) AS prediction_time FROM ev WHERE {code_predicate(pt.at_first_of)} GROUP BY subject_id"
    else:
        cand = (
            "SELECT subject_id, unnest(generate_series("
            f"first_time + INTERVAL {spec.population.min_prior_observation_days} DAY, last_time, INTERVAL {pt.every_days} DAY"
            ")) AS prediction_time FROM subj WHERE first_time IS NOT NULL"
        )
    return f"""{_subjects_sql(events, spec)}{ctes},
        cand AS ({cand})
        SELECT c.subject_id, c.prediction_time, s.birth, s.first_time, s.last_time, {outcome} AS outcome, s.death
        FROM cand c JOIN subj s USING (subject_id) {joins}
        ORDER BY c.subject_id, c.prediction_time
        """


def outcome_times(events_dir: Path, spec: TaskSpec) -> pd.DataFrame:
    """Each subject's first outcome time (subjects without one are left out)."""
    return _scan_events(events_dir, spec).outcome_frame()


def reference_outcome_times(events_dir: Path, spec: TaskSpec) -> pd.DataFrame:
    """``outcome_times`` from DuckDB SQL: the reference the NumPy scan is tested against."""
    ctes, joins, outcome = _outcome_sql(spec)
    sql = f"""{_subjects_sql(str(Path(events_dir) / "*.parquet"), spec)}{ctes}
        SELECT s.subject_id, {outcome} AS outcome_time FROM subj s {joins}
        WHERE {outcome} IS NOT NULL ORDER BY s.subject_id"""
    con = duckdb.connect()
    frame = con.execute(sql).df()
    con.close()
    return frame


def _groups(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group id per element, first position of each group) of an already sorted array:
    ``np.unique(..., return_inverse=True)`` without its sort."""
    new = np.empty(sorted_keys.size, bool)
    new[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new[1:])
    return np.cumsum(new) - 1, np.flatnonzero(new)


def label_frame(frame: pd.DataFrame | pa.Table, spec: TaskSpec) -> tuple[pa.Table, dict[str, dict[str, int]]]:
    """The label logic on candidates (a DataFrame or an Arrow table) with
    ``subject_id, prediction_time, birth, first_time, last_time, outcome`` and, where a
    subject's record ends in a death, ``death`` (absent: no one died)."""
    nat = np.iinfo(np.int64).min
    if isinstance(frame, pa.Table):
        def as_us(col: str) -> np.ndarray:
            return pc.fill_null(frame.column(col).cast(pa.timestamp("us")).cast(pa.int64()), nat).to_numpy()
        subjects = frame.column("subject_id").to_numpy().astype(np.int64, copy=False)
    else:
        def as_us(col: str) -> np.ndarray:
            return frame[col].to_numpy("datetime64[us]").astype(np.int64)
        subjects = frame["subject_id"].to_numpy(np.int64)
    t = as_us("prediction_time")
    birth, first, last, outcome = (as_us(c) for c in ("birth", "first_time", "last_time", "outcome"))
    names = frame.column_names if isinstance(frame, pa.Table) else frame.columns
    death = as_us("death") if "death" in names else np.full(t.size, nat)
    return _label_arrays(subjects, t, birth, first, last, outcome, death, spec)


def _label_arrays(
    subjects: np.ndarray, t: np.ndarray, birth: np.ndarray, first: np.ndarray, last: np.ndarray, outcome: np.ndarray,
    death: np.ndarray, spec: TaskSpec, excluded: list[pd.DataFrame] | None = None,
) -> tuple[pa.Table, dict[str, dict[str, int]]]:
    """``label_frame`` on int64 arrays (microseconds; null as the int64 minimum). With
    ``excluded`` (a list), each exclusion step's removed times per subject are appended
    to it as a frame (``subject_id``, ``step``, ``times``): site-local, for the people
    ledger (``records.people``)."""
    nat = np.iinfo(np.int64).min
    # Work in (subject, time) order; candidates_sql already returns it, so this is a check.
    if subjects.size > 1 and not ((subjects[1:] > subjects[:-1]) | ((subjects[1:] == subjects[:-1]) & (t[1:] >= t[:-1]))).all():
        order = np.lexsort((t, subjects))
        subjects, t, birth, first, last, outcome, death = (
            a[order] for a in (subjects, t, birth, first, last, outcome, death))
    has_outcome = outcome != nat
    in_horizon = has_outcome & (outcome <= t + spec.horizon_days * DAY_US)
    # a positive needs follow-up too (unless a death ended the record): see the module's docstring
    kept_unobserved = in_horizon if spec.follow_up == "negatives" else in_horizon & (death != nat)
    age_years = np.where(birth != nat, (t - birth) / DAY_US / YEAR_DAYS, np.nan)
    pop = spec.population
    reasons = {
        "age": ~((age_years >= pop.min_age_years) & (age_years <= pop.max_age_years)),
        "prior_observation": (t - first) < pop.min_prior_observation_days * DAY_US,
        "prevalent": has_outcome & (outcome <= t),
        "in_gap": has_outcome & (outcome > t) & (outcome < t + spec.gap_days * DAY_US),
        "censored": ~kept_unobserved & (last < t + spec.horizon_days * DAY_US),
    }
    if spec.temporal_split is not None:
        # A model trained at the cutoff could not know a label whose horizon ends after it:
        # a time before the cutoff is kept (for train or tuning) only when its whole outcome
        # window, and so its label and censoring, lies before the cutoff.
        cutoff = np.datetime64(spec.temporal_split.held_out_from, "us").astype(np.int64)
        reasons["crosses_cutoff"] = (t < cutoff) & (t + spec.horizon_days * DAY_US > cutoff)
    sid, starts = _groups(subjects)
    n_subjects = starts.size
    attrition = {"candidates": {"times": int(t.size), "subjects": int(n_subjects)}}
    alive = np.ones(t.size, bool)

    def exclude(steps: list[str]) -> None:
        for step in steps:
            mask = reasons[step]
            removed = alive & mask
            alive[:] &= ~mask
            # Subjects this step removed entirely: some row removed here, none left alive.
            gone = (np.bincount(sid[removed], minlength=n_subjects) > 0) & (np.bincount(sid[alive], minlength=n_subjects) == 0)
            attrition[step] = {"times": int(removed.sum()), "subjects": int(gone.sum())}
            if excluded is not None:
                excluded.append(_per_subject(subjects[starts], sid, removed, step))

    # ``sample_from: population`` draws among the times the population criteria keep,
    # before the steps that look at the outcome or the follow-up (PredictionTimes).
    after_draw = [s for s in reasons if s not in POPULATION_STEPS] if spec.prediction_times.sample_from == "population" else []
    exclude([s for s in reasons if s not in after_draw])
    # Sample at most K per subject, by a seeded hash of (subject, time): stable across
    # reruns and data refreshes (adding a visit does not reshuffle the others).
    idx = np.flatnonzero(alive)
    k = spec.prediction_times.max_per_subject
    sub_sid, sub_start = _groups(sid[idx])
    if k >= np.diff(np.r_[sub_start, idx.size]).max(initial=0):
        chosen = idx  # nobody has more than K candidates left
    else:
        rank_key = _mix(subjects[idx].astype(np.uint64) ^ _mix(t[idx].astype(np.uint64) + np.uint64(spec.prediction_times.seed)))
        # One uint64 sort key (dense subject code, then the hash's top 32 bits) sorts far
        # faster than a two-key lexsort.
        key = (sub_sid.astype(np.uint64) << np.uint64(32)) | (rank_key >> np.uint64(32))
        order = np.argsort(key, kind="stable")
        within = np.arange(order.size) - sub_start[sub_sid[order]]
        chosen = np.sort(idx[order[within < k]])  # rows are in (subject, time) order
    attrition["sampled_out"] = {"times": int(idx.size - chosen.size), "subjects": 0}
    if excluded is not None:
        sampled_out = alive.copy()
        sampled_out[chosen] = False
        excluded.append(_per_subject(subjects[starts], sid, sampled_out, "sampled_out"))
    alive[:] = False
    alive[chosen] = True
    exclude(after_draw)
    chosen = np.flatnonzero(alive)
    positive = has_outcome & (outcome >= t + spec.gap_days * DAY_US) & (outcome <= t + spec.horizon_days * DAY_US)
    labels = pa.table(
        {
            schema.SUBJECT_ID: pa.array(subjects[chosen], pa.int64()),
            schema.PREDICTION_TIME: pa.array(t[chosen].astype("datetime64[us]"), pa.timestamp("us")),
            schema.BOOLEAN_VALUE: pa.array(positive[chosen], pa.bool_()),
        }
    )
    chosen_positive = chosen[positive[chosen]]
    attrition["labelled"] = {"times": int(chosen.size), "subjects": int(_groups(subjects[chosen])[1].size)}
    attrition["positive"] = {"times": int(chosen_positive.size), "subjects": int(_groups(subjects[chosen_positive])[1].size)}
    return schema.align(labels, schema.LABEL_SCHEMA, what="labels"), attrition


def latest_eligible_times(events_dir: Path, spec: TaskSpec) -> tuple[pa.Table, dict[str, int]]:
    """For scoring, not training: the people a screening model should score now, each at
    their latest candidate prediction time of the task, in the MEDS label schema with
    ``boolean_value`` null. A person is left out when the pull records the outcome at any
    time (diagnosed: no longer a screening target, whether before or after that time),
    records their death, or at that latest time falls outside the task's population (age,
    with no birth recorded counted here too, or prior observation). Labelling's gap and
    censoring steps look ahead and do not apply, nor does its sampling of one time per
    subject. Returns the times and the subjects each step left out, in that order:
    ``candidates`` (subjects with a candidate time), ``outcome_recorded``, ``died``,
    ``age``, ``prior_observation``, and ``eligible``."""
    subjects, t, birth, first, _, outcome, death = _scan_events(events_dir, spec).candidates(spec)
    nat = np.iinfo(np.int64).min
    order = np.lexsort((t, subjects))
    subjects, t, birth, first, outcome, death = (a[order] for a in (subjects, t, birth, first, outcome, death))
    latest = np.flatnonzero(np.r_[subjects[1:] != subjects[:-1], True]) if subjects.size else subjects
    subjects, t, birth, first, outcome, death = (a[latest] for a in (subjects, t, birth, first, outcome, death))
    age_years = np.where(birth != nat, (t - birth) / DAY_US / YEAR_DAYS, np.nan)
    pop = spec.population
    steps = {
        "outcome_recorded": outcome != nat,
        "died": death != nat,  # a death recorded at any time (with a time: as the labels read it)
        "age": ~((age_years >= pop.min_age_years) & (age_years <= pop.max_age_years)),
        "prior_observation": (t - first) < pop.min_prior_observation_days * DAY_US,
    }
    counts = {"candidates": int(subjects.size)}
    alive = np.ones(subjects.size, bool)
    for step, mask in steps.items():
        counts[step] = int((alive & mask).sum())
        alive &= ~mask
    counts["eligible"] = int(alive.sum())
    table = pa.table({
        schema.SUBJECT_ID: pa.array(subjects[alive], pa.int64()),
        schema.PREDICTION_TIME: pa.array(t[alive].astype("datetime64[us]"), pa.timestamp("us")),
        schema.BOOLEAN_VALUE: pa.nulls(int(alive.sum()), pa.bool_()),
    })
    return schema.align(table, schema.LABEL_SCHEMA, what="prediction times"), counts


FOLLOW_UP = ("outcome", "no_outcome", "outcome_in_gap", "outcome_before", "window_passed", "died", "pending",
             "not_in_pull")


def follow_up(events_dir: Path, spec: TaskSpec, subject_ids: np.ndarray, prediction_times: np.ndarray,
              seen_until: np.ndarray | None = None) -> pd.DataFrame:
    """What ``events_dir`` (a later pull) says became of people scored at
    ``prediction_times``, one row per (subject, time), prospectively: ``seen_until`` is
    the subject's last event in the pull they were scored on (what was known when the
    score was shown; NaT or None: this pull's, a scoring made tonight). With ``o`` the
    subject's first outcome event in this pull, ``s`` the time seen until, the status is,
    in this order: ``not_in_pull`` (no event in this pull), ``window_passed`` (``s >= t +
    horizon``: the outcome window had closed before the score was shown, nothing was left
    to predict), ``outcome_before`` (``o <= max(t, s)``: an outcome dated at or before
    what was known when shown, recorded since), ``outcome_in_gap`` (``o < t + gap``),
    ``outcome`` (``o <= t + horizon``, and observed through it or a death recorded, as the
    task's ``follow_up`` asks: the label would be positive; else ``pending``), ``no_outcome``
    (observed through ``t + horizon`` without it: negative), ``died`` (not observed through
    it, a death recorded: it will not resolve) and ``pending`` (follow-up still open).
    With ``s <= t`` these are the label rules (the module's docstring). Returns ``status``
    (one of ``FOLLOW_UP``), ``outcome_time`` (``o`` for the statuses with an outcome in or
    before the window, else NaT), ``seen_until`` (``s``, filled with this pull's last
    event where it was missing) and ``last_time`` (the subject's last event in this pull;
    NaT when not in it)."""
    ids = np.asarray(subject_ids, np.int64)
    t = np.asarray(prediction_times, "datetime64[us]").astype(np.int64)
    scan = _scan_events(events_dir, spec)
    if scan.subjects.size:
        pos = np.minimum(np.searchsorted(scan.subjects, ids), scan.subjects.size - 1)
        found, o, last = scan.subjects[pos] == ids, scan.outcome()[pos], scan.last[pos]
        died = found & (scan.death[pos] != _NONE_MIN)
    else:
        found, o, last = np.zeros(ids.size, bool), np.full(ids.size, _NONE_MIN), np.full(ids.size, _NAT)
        died = np.zeros(ids.size, bool)
    seen = np.full(ids.size, _NAT) if seen_until is None else np.asarray(seen_until, "datetime64[us]").astype(np.int64)
    seen = np.where(seen == _NAT, np.where(found, last, _NAT), seen)
    known = np.maximum(t, seen)  # NaT (int64 min) where not found: those are not_in_pull first
    has = o != _NONE_MIN
    gap, horizon = t + spec.gap_days * DAY_US, t + spec.horizon_days * DAY_US
    # an outcome in the window counts as the label would: observed through the horizon, or a death ended the
    # record (follow_up everyone); otherwise it waits, as a censored time would
    observed = (last >= horizon) | died | (spec.follow_up == "negatives")
    status = np.select(
        [~found, seen >= horizon, has & (o <= known), has & (o < gap), has & (o <= horizon) & observed,
         ~(has & (o <= horizon)) & (last >= horizon), died],
        ["not_in_pull", "window_passed", "outcome_before", "outcome_in_gap", "outcome", "no_outcome", "died"], "pending")
    shown = np.isin(status, ["outcome_before", "outcome_in_gap", "outcome"])
    return pd.DataFrame({"status": status, "outcome_time": np.where(shown, o, _NAT).astype("datetime64[us]"),
                         "seen_until": seen.astype("datetime64[us]"),
                         "last_time": np.where(found, last, _NAT).astype("datetime64[us]")})


def _per_subject(ids: np.ndarray, sid: np.ndarray, removed: np.ndarray, step: str) -> pd.DataFrame:
    """The times ``removed`` holds per subject (those with any), for one step; ``ids``:
    each dense subject code's id."""
    counts = np.bincount(sid[removed], minlength=ids.size)
    keep = np.flatnonzero(counts)
    return pd.DataFrame({"subject_id": ids[keep].astype(np.int64), "step": step, "times": counts[keep].astype(np.int64)})


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fast, well-mixed, deterministic 64-bit hash."""
    z = np.asarray(x).astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


SplitName = Literal["train", "tuning", "held_out"]


def assign_splits(
    subject_ids: np.ndarray, *, seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> np.ndarray:
    """Subject-level split names from a seeded hash of each subject id.

    A subject's split depends only on its id and the seed, so it is stable across
    reruns and data refreshes (new subjects never move old ones).
    """
    if abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions must be non-negative and sum to 1; got {fractions!r}.")
    u = (_mix(np.asarray(subject_ids, np.int64).astype(np.uint64) ^ _mix(np.uint64(seed))) >> np.uint64(11)).astype(
        np.float64
    ) / float(1 << 53)
    cuts = np.cumsum(fractions)
    names = np.array(schema.SPLITS)
    return names[np.searchsorted(cuts[:-1], u, side="right")]


def temporal_splits(labels: pa.Table, held_out_from: datetime, *, seed: int = 0, tuning: float = 0.15) -> pa.Table:
    """Per prediction time: before ``held_out_from`` train or tuning (by subject hash),
    from it on held-out. A subject may appear on both sides, as in a temporal
    validation of a deployed model."""
    subjects = labels.column(schema.SUBJECT_ID).to_numpy()
    times = labels.column(schema.PREDICTION_TIME).to_numpy()
    before = assign_splits(subjects, seed=seed, fractions=(1 - tuning, tuning, 0.0))
    split = np.where(times < np.datetime64(held_out_from, "us"), before, schema.HELD_OUT)
    return pa.table(
        {
            schema.SUBJECT_ID: pa.array(subjects, pa.int64()),
            schema.PREDICTION_TIME: labels.column(schema.PREDICTION_TIME),
            schema.SPLIT: pa.array(split.astype(str)),
        }
    )


def split_rows(labels: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """``labels`` with a ``split`` column, from subject splits or per-time splits."""
    keys = [schema.SUBJECT_ID] + ([schema.PREDICTION_TIME] if schema.PREDICTION_TIME in splits.columns else [])
    merged = labels.merge(splits, on=keys, how="left", validate="many_to_one")
    missing = int(merged[schema.SPLIT].isna().sum())
    if missing:
        raise ValueError(f"splits must cover every label row; {missing} row(s) have no split. Recompute the splits.")
    return merged


def write_labels(labels: pa.Table, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    pq.write_table(schema.align(labels, schema.LABEL_SCHEMA, what="labels"), tmp)
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class LabelSet:
    """Paths written by ``label_dataset``."""

    dir: Path
    task: str

    @property
    def labels_path(self) -> Path:
        return self.dir / "labels" / f"{self.task}.parquet"

    @property
    def splits_path(self) -> Path:
        return self.dir / "labels" / f"{self.task}.splits.parquet"

    @property
    def outcomes_path(self) -> Path:
        """Row-level, site-local: each labelled subject's first outcome time (for lead times)."""
        return self.dir / "labels" / f"{self.task}.outcomes.parquet"

    @property
    def exclusions_path(self) -> Path:
        """Row-level, site-local: each exclusion step's removed times per subject (for the people ledger)."""
        return self.dir / "labels" / f"{self.task}.exclusions.parquet"

    @property
    def attrition_path(self) -> Path:
        return self.dir / "labels" / f"{self.task}.attrition.json"

    def load(self) -> tuple[pa.Table, pd.DataFrame, dict]:
        return (
            pq.read_table(self.labels_path),
            pd.read_parquet(self.splits_path),
            json.loads(self.attrition_path.read_text()),
        )


def label_dataset(events_dir: Path, spec: TaskSpec, out_dir: Path, *, split_seed: int = 0) -> LabelSet:
    """Labels, subject-level splits for every labelled subject, and attrition counts."""
    out = LabelSet(Path(out_dir), spec.name)
    with stage(f"label {spec.name}") as counts:
        scan = _scan_events(events_dir, spec)  # one pass over the events for labels and outcome times
        excluded: list[pd.DataFrame] = []
        labels, attrition = _label_arrays(*scan.candidates(spec), spec, excluded)
        write_labels(labels, out.labels_path)
        (pd.concat(excluded, ignore_index=True) if excluded else
         pd.DataFrame({"subject_id": pd.Series([], dtype="int64"), "step": pd.Series([], dtype=str),
                       "times": pd.Series([], dtype="int64")})).to_parquet(out.exclusions_path, index=False)
        subjects = np.unique(labels.column(schema.SUBJECT_ID).to_numpy())
        if spec.temporal_split is None:
            splits = pa.table(
                {schema.SUBJECT_ID: pa.array(subjects, pa.int64()), schema.SPLIT: pa.array(assign_splits(subjects, seed=split_seed))}
            )
            splits = schema.align(splits, schema.SPLIT_SCHEMA, what="splits")
        else:
            splits = temporal_splits(labels, spec.temporal_split.held_out_from, seed=split_seed)
        tmp = out.splits_path.with_name(f"splits-{spec.name}.parquet.partial")
        pq.write_table(splits, tmp)
        tmp.replace(out.splits_path)
        out.attrition_path.write_text(json.dumps(attrition, indent=2))
        outcomes = scan.outcome_frame()
        outcomes[outcomes[schema.SUBJECT_ID].isin(subjects)].to_parquet(out.outcomes_path, index=False)
        counts.update(labels=labels.num_rows, positives=attrition["positive"]["times"], subjects=int(subjects.size))
    return out
