"""ACES task configs (the MEDS-DEV format) as the other way to define a task.

An ACES config (``predicates``, ``trigger``, ``windows``; optionally a separate
dataset-specific predicates file) runs through ``es-aces`` shard by shard on a MEDS
events folder, and its output becomes the same MEDS label schema Forewarn's own tasks
give, sorted by subject and prediction time.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import yaml

from forewarn.records import schema


def is_aces_config(path: Path) -> bool:
    """True for an ACES task config (it has ``trigger`` and ``windows``)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "trigger" in data and "windows" in data


def aces_labels(config_path: Path, events_dir: Path, predicates_path: Path | None = None) -> pa.Table:
    """Labels from an ACES config on every shard of ``events_dir``."""
    from aces import config as aces_config
    from aces import predicates, query
    from omegaconf import DictConfig

    logging.getLogger("aces").setLevel(logging.WARNING)
    cfg = aces_config.TaskExtractorConfig.load(config_path=Path(config_path), predicates_path=predicates_path)
    tables = []
    for shard in sorted(Path(events_dir).glob("*.parquet")):
        predicates_df = predicates.get_predicates_df(cfg, DictConfig({"path": str(shard), "standard": "meds"}))
        result = query.query(cfg, predicates_df)
        if result.height == 0:
            continue
        if "index_timestamp" not in result.columns:
            raise ValueError(
                f"ACES config {config_path} must mark one window boundary with index_timestamp "
                "(the prediction time), e.g. `index_timestamp: end` on the input window."
            )
        if "label" not in result.columns:
            raise ValueError(f"ACES config {config_path} must give one window a `label` predicate.")
        tables.append(
            pa.table(
                {
                    schema.SUBJECT_ID: result["subject_id"].to_arrow().cast(pa.int64()),
                    schema.PREDICTION_TIME: result["index_timestamp"].to_arrow().cast(pa.timestamp("us")),
                    schema.BOOLEAN_VALUE: result["label"].to_arrow().cast(pa.bool_()),
                }
            )
        )
    if not tables:
        return schema.LABEL_SCHEMA.empty_table()
    labels = pa.concat_tables(tables).sort_by([(schema.SUBJECT_ID, "ascending"), (schema.PREDICTION_TIME, "ascending")])
    return schema.align(labels, schema.LABEL_SCHEMA, what="ACES labels")
