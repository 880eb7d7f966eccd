"""The site's record of its pulls (``flows.nightly.previous_pull``): each night compares its
pull with the latest earlier one whose content differed."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from forewarn.flows.cache import Stage
from forewarn.flows.nightly import PULLS_FILE, previous_pull


def pulled(tmp_path: Path, name: str, key: str, digest: str, kept: int) -> Stage:
    report = tmp_path / f"{name}.json"
    report.write_text(json.dumps({"tables": {"person": {"read": kept, "kept": kept, "quarantined": 0}}, "quarantined": 0}))
    return Stage("pull", key, tmp_path, digest, SimpleNamespace(report_path=report), False, 0.0)


def test_pulls_are_told_apart_by_content_not_by_key(tmp_path):
    site = SimpleNamespace(workdir=tmp_path)
    assert previous_pull(site, pulled(tmp_path, "n1", "k1", "aaa", 100)) is None  # first night
    # A database source is pulled again every night under a new key: the same content is
    # the same pull, so there is still nothing earlier to compare with.
    assert previous_pull(site, pulled(tmp_path, "n2", "k2", "aaa", 100)) is None
    third = previous_pull(site, pulled(tmp_path, "n3", "k3", "bbb", 60))
    assert third["digest"] == "aaa" and third["tables"]["person"]["kept"] == 100
    # Unchanged again: still compared with the same earlier pull (its report does not change).
    assert previous_pull(site, pulled(tmp_path, "n4", "k4", "bbb", 60)) == third
    assert [h["digest"] for h in json.loads((tmp_path / PULLS_FILE).read_text())] == ["aaa", "bbb"]
