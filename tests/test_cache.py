"""The stage cache on its own: keys, hits, partial folders, results with paths, pruning."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from forewarn.flows import cache as C


@dataclass(frozen=True)
class Result:
    dir: Path
    rows: int


def test_a_stage_computes_once_and_returns_its_result_with_paths(tmp_path):
    calls = []

    def compute(out: Path) -> Result:
        calls.append(out)
        (out / "x.txt").write_text("hello")
        return Result(out / "x.txt", 3)

    stages = C.StageCache(tmp_path / "stages")
    key = C.key_of("demo", {"a": 1}, ["input-digest"])
    first = stages.run("demo", key, compute)
    second = stages.run("demo", key, compute)
    assert len(calls) == 1 and calls[0].name.startswith(f"{key}.partial-")
    assert (first.hit, second.hit) == (False, True)
    assert first.result == second.result == Result(tmp_path / "stages" / "demo" / key / "x.txt", 3)
    assert first.digest == second.digest == C.tree_digest(first.dir)
    assert json.loads((first.dir / C.MARKER).read_text())["key"] == key


def test_keys_follow_parameters_inputs_and_code(monkeypatch):
    base = C.key_of("s", {"a": 1}, ["d1"])
    assert base == C.key_of("s", {"a": 1}, ["d1"])
    assert len({base, C.key_of("s", {"a": 2}, ["d1"]), C.key_of("s", {"a": 1}, ["d2"]), C.key_of("t", {"a": 1}, ["d1"])}) == 4
    monkeypatch.setattr(C, "_FILE_DIGESTS", {**C.file_digests(), "records/pull.py": "another version of the code"})
    assert C.key_of("s", {"a": 1}, ["d1"]) != base


def test_the_command_line_is_not_part_of_the_code_digest():
    assert {"flows/cli.py", "flows/artifact.py"} <= C.NOT_IN_CODE_DIGEST
    files = C.file_digests()
    assert "flows/nightly.py" in files and "flows/cli.py" not in files and "records/pull.py" in files
    assert len(C.code_digest()) == 32


def test_a_stage_key_holds_only_the_code_the_stage_runs():
    files = {"records/pull.py": "1", "features/featurize.py": "2", "models/train.py": "3",
             "evaluation/report.py": "4", "flows/tracking.py": "5", "flows/nightly.py": "6"}
    stages = ["pull", "label", "featurize", "train", "evaluate", "temporal", "champion model", "publish", None]

    def changed(rel: str) -> list:
        edited = files | {rel: "edited"}
        return [s for s in stages if C.scoped_digest(edited, s) != C.scoped_digest(files, s)]

    assert changed("records/pull.py") == stages  # every stage reads what records/ defines
    assert changed("features/featurize.py") == ["label", "featurize", "train", "evaluate", "temporal", "publish", None]
    assert changed("models/train.py") == ["train", "evaluate", "temporal", "publish", None]
    assert changed("evaluation/report.py") == ["evaluate", "temporal", "publish", None]
    assert changed("flows/tracking.py") == ["champion model", "publish", None]
    assert changed("flows/nightly.py") == stages  # the stage definitions themselves
    assert C.scoped_digest(files, "mlflow external-t2d_2y-community") == C.scoped_digest(files, None)


def test_a_failed_stage_leaves_nothing_and_a_stale_partial_is_removed(tmp_path):
    stages = C.StageCache(tmp_path)
    stale = tmp_path / "demo" / "k.partial-deadbeef"
    stale.mkdir(parents=True)

    def boom(out: Path):
        (out / "half.txt").write_text("half")
        raise RuntimeError("killed half way")

    with pytest.raises(RuntimeError):
        stages.run("demo", "k", boom)
    assert list((tmp_path / "demo").iterdir()) == []
    assert not stages.has("demo", "k")  # a failed stage is not there to reuse
    done = stages.run("demo", "k", lambda out: {"n": 1})
    assert done.result == {"n": 1} and not done.hit
    assert stages.has("demo", "k") and not stages.has("demo", "other-key")
    assert not C.StageCache(tmp_path, enabled=False).has("demo", "k")  # caching off: always computed


def test_the_digest_of_a_stage_can_leave_out_files_that_carry_the_time(tmp_path):
    stages = C.StageCache(tmp_path)

    def write(text):
        def compute(out: Path):
            (out / "data.parquet").write_text("same rows")
            (out / "report.json").write_text(text)
        return compute

    a = stages.run("a", "k1", write("made at 01:00"), digest_of=lambda rel: rel.suffix == ".parquet")
    b = stages.run("a", "k2", write("made at 02:00"), digest_of=lambda rel: rel.suffix == ".parquet")
    assert a.digest == b.digest


def test_prune_keeps_only_what_it_is_told(tmp_path):
    stages = C.StageCache(tmp_path)
    keep = stages.run("a", "k1", lambda out: None)
    drop = stages.run("a", "k2", lambda out: None)
    assert stages.prune([keep.dir]) == 1
    assert keep.dir.is_dir() and not drop.dir.exists()
