"""A study: one YAML file with sites, tasks, features, models, evaluation and schedule.

Parsing is inert (no I/O beyond reading the one file in ``load_study``) and strict: a
misspelt key fails with its name and the allowed keys. Relative paths are resolved
against the study file's folder.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from forewarn.evaluation.drift import DriftPolicy
from forewarn.evaluation.evaluate import EvaluationConfig
from forewarn.evaluation.report import REPORTING_TOPICS
from forewarn.features.featurize import FeatureConfig
from forewarn.flows.executor import ExecutorSettings
from forewarn.flows.tracking import TrackingSettings, redact_uri
from forewarn.models.promotion import PromotionConfig
from forewarn.models.train import ModelConfig
from forewarn.records import privacy
from forewarn.records.config import Strict, explain


class SourceConfig(Strict):
    model_config = ConfigDict(hide_input_in_errors=True)  # a rejected URL may hold a password

    format: Literal["omop", "meds", "fhir"] = "omop"
    location: str = Field(description="a path (DuckDB file, folder) or, for OMOP, a SQLAlchemy URL (never with a "
                                      "password: use ~/.pgpass, PGPASSFILE or PGPASSWORD)")
    db_schema: str | None = Field(None, description="the database schema of an OMOP SQL source")

    @field_validator("location")
    @classmethod
    def _no_password(cls, value: str) -> str:
        # The study travels in Prefect's flow-run parameters and in every MLflow run's
        # config/study.json, where every site would read another site's database password.
        if redact_uri(value) != value:
            raise ValueError(
                f"a site's source location must not contain a password; got {redact_uri(value)!r}. The study is "
                "logged with every run, where the other sites would read it: put the password in ~/.pgpass (or "
                "PGPASSFILE / PGPASSWORD) on the site's machine."
            )
        return value

    @property
    def is_url(self) -> bool:
        return "://" in self.location

    def exists(self) -> bool:
        return self.is_url or Path(self.location).exists()


class DeidSettings(Strict):
    max_shift_days: int = Field(365, ge=0, le=3650)
    secret_file: Path | None = Field(None, description="file holding the site's secret; else $FOREWARN_DEID_SECRET")


class SiteConfig(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    source: SourceConfig
    workdir: Path | None = Field(None, description="where the site's row-level outputs stay; default <study dir>/sites/<name>/work")
    deid: DeidSettings = DeidSettings()
    max_bad_fraction: float = Field(0.05, ge=0, le=1, description="fail the pull when more of a table is quarantined")


class Schedule(Strict):
    cron: str = "0 2 * * *"
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"cron must have 5 fields (minute hour day month weekday); got {value!r}.")
        return value


class ValidationSettings(Strict):
    designs: list[Literal["internal", "external", "temporal", "network"]] = Field(
        default=["internal", "external"],
        description="internal held-out always; external: each site's model at the others; temporal: train before "
        "temporal_from, test after; network: one model trained across every site without moving rows "
        "(models.federated), evaluated at each site",
    )
    rounds_per_visit: int = Field(10, ge=1, description="network design: trees a site adds each time the model visits it")
    site_processes: bool = Field(
        True, description="network design: each site answers the training's calls from a process of its own "
        "(models.site_process), which holds its rows and refuses any other call; false: in the flow's process",
    )
    temporal_from: date | None = Field(None, description="the first day of the temporal test period")
    registered: list[str] = Field(
        default=[],
        description="registered models from the MLflow registry (another study's: a site outside it, or a network it "
        "is not part of) to validate at every site of this study, as shipped and after recalibration on the site's "
        "tuning split, each for its own task only: NAME (its champion), NAME@ALIAS or NAME/VERSION, e.g. "
        "forewarn-t2d_2y-academic. Only aggregates are logged (an MLflow run per model and site, validation_design "
        "external); a site's report lists them beside its own model",
    )

    own_models: bool = Field(
        True, description="train, evaluate and publish each site's own models (false: a validation-only study, which "
        "only validates the validation.registered models at its sites)",
    )

    @field_validator("registered")
    @classmethod
    def _registered(cls, value: list[str]) -> list[str]:
        from forewarn.flows.tracking import parse_model_ref

        for ref in value:
            parse_model_ref(ref)
        seen = [parse_model_ref(ref) for ref in value]
        if len(set(seen)) != len(seen):
            raise ValueError(f"each registered model is named once; got {value}.")
        return value

    @model_validator(mode="after")
    def _validation_only(self) -> ValidationSettings:
        if not self.own_models:
            if not self.registered:
                raise ValueError("a validation-only study (own_models: false) validates validation.registered models; "
                                 "name at least one, e.g. registered: [forewarn-t2d_2y-academic].")
            designs = sorted(set(self.designs) - {"internal"}) if "designs" in self.model_fields_set else []
            if designs:
                raise ValueError(f"a validation-only study (own_models: false) trains no model of its own, so it has no "
                                 f"{' or '.join(designs)} design to run; leave validation.designs out.")
        return self

    @model_validator(mode="after")
    def _temporal(self) -> ValidationSettings:
        if "temporal" in self.designs and self.temporal_from is None:
            raise ValueError("the temporal design needs temporal_from (the first day of the test period).")
        return self


class CacheSettings(Strict):
    enabled: bool = Field(True, description="reuse finished stages whose inputs are unchanged (false: recompute all)")
    keep_runs: int = Field(2, ge=1, description="stage folders of this many recent runs are kept; older ones are removed")


WORKLIST_KINDS = ("site", "network", "other_sites")


class WorklistSettings(Strict):
    enabled: bool = Field(
        False,
        description="after each night, score every eligible person at each site with the champion and write the site's "
        "worklist (<workdir>/worklists/<study>/<task>.parquet, highest risk first); it stays at the site",
    )
    models: list[str] = Field(
        default=["site", "network"], min_length=1,
        description="whose champion scores, in order of preference: site (the site's own, forewarn-<task>-<site>), "
        "network (forewarn-<task>-network), other_sites (another site's of the study, in the study's order) or a "
        "site's name (that site's); another site's only where it was externally validated, and without its alert "
        "threshold (chosen at that site); the first that has a champion is used",
    )
    new_alert_days: int = Field(
        30, ge=0, le=3650,
        description="an alert is new (in <task>.new.parquet) when the person was alerted on no earlier night within "
        "this many days (0: every night's alerts are new)",
    )
    followup_days: int = Field(
        1095, ge=1, le=3650,
        description="how long the site keeps each person's first scoring at each prediction time (<task>.scored.parquet) "
        "to follow it up: each night's <task>.json says what tonight's pull shows became of those scored (outcome in "
        "the task's window or not, still open), with the alerts' sensitivity, PPV and lead time; keep it longer than "
        "the tasks' horizons, or no scoring lives to resolve",
    )
    recalibrate: bool = Field(
        True,
        description="another site's champion scores with the calibrator its external validation at this site fitted on "
        "this site's tuning split (where that split held 11+ events and 11+ non-events), so that its risks are this "
        "site's; false: with the calibrator it was published with at its own site",
    )
    alert_budget: float | None = Field(
        None, gt=0, le=1000,
        description="alerts per 1,000 people on the worklist: the highest risks alert, whatever the model's threshold "
        "(which a network model or another site's does not give); default: the threshold the site's model was "
        "published with",
    )

    @model_validator(mode="after")
    def _distinct(self) -> WorklistSettings:
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"worklist.models names a model twice: {self.models}; list each once.")
        return self


class RetrySettings(Strict):
    attempts: int = Field(3, ge=0, le=10, description="retries of a site pull after a transient source error")
    delays_seconds: list[float] = Field(
        default=[10, 30, 90], min_length=1, description="wait before each retry (the last value repeats)"
    )


class Reporting(Strict):
    """What only the study's authors can state, shown in every report's TRIPOD+AI
    checklist; a report whose statements are missing says so in its limitations.

    Study-level text, never patient data: keep names of patients out of it (it is
    logged with every run and shown in every report)."""

    intended_use: dict[str, str] = Field(
        default={},
        description="per task name: the intended users, the clinical pathway and the action an alert prompts",
    )
    ethics: str | None = Field(None, min_length=1, max_length=2000, description=REPORTING_TOPICS["ethics"])
    registration: str | None = Field(None, min_length=1, max_length=2000, description=REPORTING_TOPICS["registration"])
    funding: str | None = Field(None, min_length=1, max_length=2000, description=REPORTING_TOPICS["funding"])
    conflicts_of_interest: str | None = Field(None, min_length=1, max_length=2000, description=REPORTING_TOPICS["conflicts_of_interest"])
    public_involvement: str | None = Field(None, min_length=1, max_length=2000, description=REPORTING_TOPICS["public_involvement"])
    data_availability: str | None = Field(None, min_length=1, max_length=2000, description=REPORTING_TOPICS["data_availability"])

    @field_validator("intended_use")
    @classmethod
    def _texts(cls, value: dict[str, str]) -> dict[str, str]:
        for task, text in value.items():
            if not text.strip() or len(text) > 2000:
                raise ValueError(f"intended_use of task {task!r} must be 1 to 2000 characters; got {len(text.strip())}.")
        return value

    @field_validator(*REPORTING_TOPICS)
    @classmethod
    def _statement(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("a statement must not be blank; leave the key out when there is nothing to state.")
        return value

    def for_task(self, task: str) -> dict:
        """What one task's report shows (``report_context``'s ``reporting``): its intended
        use and the study's statements, each with its checklist topic; None where unstated."""
        return {
            "intended_use": self.intended_use.get(task),
            "statements": [{"field": k, "topic": topic, "text": getattr(self, k)} for k, topic in REPORTING_TOPICS.items()],
        }

    def check_tasks(self, tasks: list[str]) -> None:
        unknown = sorted(set(self.intended_use) - set(tasks))
        if unknown:
            raise ValueError(
                f"reporting.intended_use names task(s) {unknown} that the study does not run; its tasks are {sorted(tasks)}. "
                "Key each intended use by a task's name."
            )


class Study(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    sites: list[SiteConfig] = Field(min_length=1)
    tasks: list[str] = Field(min_length=1, description="built-in task names (t2d_2y, ...) or paths to task YAML files")
    split_seed: int = 0
    features: FeatureConfig = FeatureConfig()
    models: ModelConfig = ModelConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    schedule: Schedule = Schedule()
    validation: ValidationSettings = ValidationSettings()
    promotion: PromotionConfig = PromotionConfig()
    executor: ExecutorSettings = ExecutorSettings()
    tracking: TrackingSettings = TrackingSettings()
    drift: DriftPolicy = DriftPolicy()
    cache: CacheSettings = CacheSettings()
    retries: RetrySettings = RetrySettings()
    reporting: Reporting = Reporting()
    worklist: WorklistSettings = WorklistSettings()
    demo: bool = Field(False, description="synthetic data: use the public demo de-identification secret")

    @model_validator(mode="after")
    def _unique_sites(self) -> Study:
        names = [s.name for s in self.sites]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"site names must be unique; {dupes} appear more than once.")
        if "network" in names:
            raise ValueError("a site cannot be named 'network': the name is the network model's in the registry "
                             "(forewarn-<task>-network); rename the site.")
        if self.models.leaf_min_cell < privacy.MIN_CELL:
            raise ValueError(
                f"models.leaf_min_cell must be at least {privacy.MIN_CELL}; got {self.models.leaf_min_cell}. The trees "
                f"leave the site with every model, and a leaf's value gives its counts away."
            )
        if any(n in WORKLIST_KINDS for n in names):
            raise ValueError(f"a site cannot be named {' or '.join(WORKLIST_KINDS[:1] + WORKLIST_KINDS[2:])}: "
                             "worklist.models gives those words their own meaning; rename the site.")
        unknown = [m for m in self.worklist.models if m not in WORKLIST_KINDS and m not in names]
        if unknown:
            raise ValueError(f"worklist.models names {unknown}, which is neither {', '.join(WORKLIST_KINDS)} nor a site "
                             f"of the study ({', '.join(names)}).")
        if self.features.min_code_subjects < privacy.MIN_CELL:
            raise ValueError(
                f"features.min_code_subjects must be at least {privacy.MIN_CELL}; got {self.features.min_code_subjects}. "
                "The column names leave the site with every model and report, so a code held by fewer than "
                f"{privacy.MIN_CELL} people must stay out of them."
            )
        return self


def parse_study(data: object, *, base_dir: Path, where: str = "study") -> Study:
    """Validate ``data`` and resolve relative paths against ``base_dir``."""
    try:
        study = Study.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{where} is not a valid study:\n{explain(exc, Study)}") from None
    base_dir = Path(base_dir).resolve()
    sites = []
    for site in study.sites:
        source = site.source
        if not source.is_url and not Path(source.location).is_absolute():
            source = source.model_copy(update={"location": str(base_dir / source.location)})
        work = site.workdir or Path("sites") / site.name / "work"
        work = work if work.is_absolute() else base_dir / work
        deid = site.deid
        if deid.secret_file is not None and not deid.secret_file.is_absolute():
            deid = deid.model_copy(update={"secret_file": base_dir / deid.secret_file})
        sites.append(site.model_copy(update={"source": source, "workdir": work, "deid": deid}))
    tasks = [
        str(base_dir / t) if t.endswith((".yaml", ".yml")) and not Path(t).is_absolute() else t for t in study.tasks
    ]
    return study.model_copy(update={"sites": sites, "tasks": tasks})


def load_study(path: Path) -> Study:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study file {str(path)!r} does not exist; pass the path of a study YAML.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    return parse_study(data, base_dir=path.parent, where=str(path))


_DEMO_USE = ("A demonstration on synthetic records: not for clinical use. As a real study might state it: {who}; "
             "{action}.")
DEMO_REPORTING = {
    "intended_use": {
        "t2d_2y": _DEMO_USE.format(who="primary care teams screening adults at routine outpatient visits",
                                   action="an alert prompts an HbA1c test, and lifestyle advice where it is raised"),
        "ckd3_2y": _DEMO_USE.format(who="primary care teams monitoring adults' kidney function",
                                    action="an alert prompts an eGFR and urine albumin-to-creatinine test and a review "
                                           "of nephrotoxic medicines"),
        "pancreatic_cancer_1y": _DEMO_USE.format(who="clinicians deciding on referral for imaging",
                                                 action="an alert prompts a review of the record for referral to "
                                                        "abdominal imaging"),
    },
    "ethics": "Not needed: the demo network is synthetic (no person's records).",
    "registration": "Not registered (a software demonstration).",
    "funding": "None.",
    "conflicts_of_interest": "None.",
    "public_involvement": "None (a software demonstration).",
    "data_availability": "The synthetic network is rebuilt by `forewarn demo`; the code is Forewarn's.",
}


def demo_study_yaml(sites: dict[str, Path], base_dir: Path) -> str:
    """The study file ``forewarn demo`` writes next to its network."""
    data = {
        "name": "demo",
        "demo": True,
        "tasks": ["t2d_2y", "ckd3_2y", "pancreatic_cancer_1y"],
        "sites": [
            {"name": name, "source": {"format": "omop", "location": str(Path(p).resolve().relative_to(Path(base_dir).resolve()))}}
            for name, p in sites.items()
        ],
        "validation": {"designs": ["internal", "external", "temporal", "network"], "temporal_from": "2021-07-01"},
        # each site's report shows whether more training data would help (off by default)
        "evaluation": {"learning_curve": {"fractions": [0.25, 0.5, 1.0]}},
        "schedule": {"cron": "0 2 * * *", "timezone": "UTC"},
        "reporting": DEMO_REPORTING,
        # each site's worklist: every eligible person scored by the champion, highest risk first; the
        # community site has no model of the rare outcome, nor has the network: academic's scores it there
        "worklist": {"enabled": True, "models": ["site", "network", "other_sites"]},
    }
    return yaml.safe_dump(data, sort_keys=False)
