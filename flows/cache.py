"""Stage results persisted under a key made of the content digests of their inputs.

Every stage of the nightly flow (pull, label, featurize, train, evaluate, validations,
publish) writes into ``<site workdir>/stages/<stage>/<key>/``, where ``key`` hashes the
stage's parameters, the content digests of its inputs and the digest of Forewarn's own
code. The folder is written as ``<key>.partial-<random>`` and renamed into place only
when the stage has finished, with a ``.stage.json`` marker holding the result and the
digest of what the stage wrote. So:

* a rerun on unchanged inputs finds every marker and recomputes nothing;
* a run killed at any point (``kill -9`` included) leaves at most a ``.partial`` folder,
  which the next run ignores and removes; finished stages are reused, so the resumed run
  ends with the same outputs as an uninterrupted one;
* downstream keys use the *output* digest of upstream stages, so an upstream stage that
  reruns and produces identical bytes (a nightly pull of unchanged data) leaves the
  downstream stages cached.

Results are small frozen dataclasses of paths (``PullResult``, ``FeatureMatrix``, ...) or
plain JSON records; paths are stored relative to the stage folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("forewarn")

MARKER = ".stage.json"
CHUNK = 8 << 20


def _hasher():
    return hashlib.blake2b(digest_size=16)


def file_digest(path: Path, h=None) -> str:
    own = h is None
    h = h or _hasher()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest() if own else ""


def tree_digest(root: Path, *, include: Callable[[Path], bool] | None = None) -> str:
    """Digest of the relative names and bytes of every file under ``root`` (sorted)."""
    root = Path(root)
    h = _hasher()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MARKER)
    for path in files:
        rel = path.relative_to(root)
        if include is not None and not include(rel):
            continue
        h.update(str(rel).encode() + b"\0")
        file_digest(path, h)
        h.update(b"\0")
    return h.hexdigest()


def source_digest(location: str) -> str | None:
    """Content digest of a file or folder source; None for a database URL (which cannot
    be hashed without reading it: such a source is pulled every run and the stages after
    the pull are keyed on what the pull wrote)."""
    if "://" in location:
        return None
    path = Path(location)
    if path.is_file():
        return file_digest(path)
    if path.is_dir():
        return tree_digest(path)
    return None


# Modules that cannot change what a stage writes (the command line, deployment entry
# points, the Prefect artifact, where work runs): editing them keeps the stages.
NOT_IN_CODE_DIGEST = {"flows/cli.py", "flows/deploy.py", "flows/artifact.py", "flows/executor.py"}

# The code each kind of stage runs: a stage's key holds the digest of these packages only,
# so that (say) an edit to evaluation/ keeps the pulls, labels, features and models. The
# flow's own stage definitions (flows/nightly.py, cache.py, study.py) count for every
# stage; a stage kind not listed here (publication, MLflow logging) counts everything.
FLOW_CORE = ("flows/nightly.py", "flows/cache.py", "flows/study.py")
CODE_SCOPES: dict[str, tuple[str, ...]] = {
    "pull": ("records",),
    "merge pull": ("records",),
    "label": ("records", "features"),
    "featurize": ("records", "features"),
    "champion model": ("records", "flows/tracking.py"),
    "train": ("records", "features", "models"),
    "evaluate": ("records", "features", "models", "evaluation"),
    "external": ("records", "features", "models", "evaluation"),
    "temporal": ("records", "features", "models", "evaluation"),
}
_FILE_DIGESTS: dict[str, str] | None = None


def file_digests() -> dict[str, str]:
    """``{"<package>/<path>": digest}`` of Forewarn's source files (``.py``, ``.yaml``,
    ``.j2``), but ``NOT_IN_CODE_DIGEST``; read once per process."""
    global _FILE_DIGESTS
    if _FILE_DIGESTS is None:
        out = {}
        package_dirs = sorted({Path(next(iter(importlib.import_module(f"forewarn.{p}").__path__)))
                               for p in ("records", "features", "models", "evaluation", "flows")})
        for folder in package_dirs:
            for path in sorted(folder.rglob("*")):
                rel = f"{folder.name}/{path.relative_to(folder)}"
                if path.suffix in (".py", ".yaml", ".j2") and "__pycache__" not in path.parts and rel not in NOT_IN_CODE_DIGEST:
                    out[rel] = file_digest(path)
        _FILE_DIGESTS = out
    return _FILE_DIGESTS


def scoped_digest(files: dict[str, str], stage: str | None) -> str:
    """Digest of the entries of ``files`` that ``stage`` runs (``CODE_SCOPES``; all of
    them for ``None`` or an unlisted stage)."""
    scope = CODE_SCOPES.get(stage) if stage is not None else None
    h = _hasher()
    for rel, digest in sorted(files.items()):
        if scope is None or rel in FLOW_CORE or any(rel == s or rel.startswith(s + "/") for s in scope):
            h.update(rel.encode() + b"\0" + digest.encode() + b"\0")
    return h.hexdigest()


def code_digest(stage: str | None = None) -> str:
    """Digest of the Forewarn source that ``stage`` runs (every source file for ``None``):
    a code change invalidates the stages whose code changed and what follows them."""
    return scoped_digest(file_digests(), stage)


def key_of(stage: str, params: Any, inputs: Iterable[str]) -> str:
    """The stage key: its name, parameters (JSON), input digests and its code's digest."""
    payload = json.dumps({"stage": stage, "params": params, "inputs": list(inputs), "code": code_digest(stage)},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


@dataclasses.dataclass(frozen=True)
class Stage:
    """A finished stage: its result, where it lives, the digest of what it wrote, and
    whether it came from the cache."""

    name: str
    key: str
    dir: Path
    digest: str
    result: Any
    hit: bool
    seconds: float


def _encode(value: Any, base: Path) -> Any:
    if isinstance(value, Path):
        try:
            return {"__path__": str(value.relative_to(base))}
        except ValueError:
            return {"__abspath__": str(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: _encode(getattr(value, f.name), base) for f in dataclasses.fields(value)}}
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k, base), _encode(v, base)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return {"__tuple__" if isinstance(value, tuple) else "__list__": [_encode(v, base) for v in value]}
    return value


def _decode(value: Any, base: Path) -> Any:
    if isinstance(value, dict):
        if "__path__" in value:
            return base / value["__path__"]
        if "__abspath__" in value:
            return Path(value["__abspath__"])
        if "__dataclass__" in value:
            module, _, name = value["__dataclass__"].partition(":")
            cls = getattr(importlib.import_module(module), name)
            return cls(**{k: _decode(v, base) for k, v in value["fields"].items()})
        if "__dict__" in value:
            return {_decode(k, base): _decode(v, base) for k, v in value["__dict__"]}
        if "__list__" in value:
            return [_decode(v, base) for v in value["__list__"]]
        if "__tuple__" in value:
            return tuple(_decode(v, base) for v in value["__tuple__"])
    return value


class StageCache:
    """The stage folders of one site: ``<root>/<stage>/<key>/``."""

    def __init__(self, root: Path, *, enabled: bool = True, site: str = "") -> None:
        self.root = Path(root)
        self.enabled = enabled
        self.used: list[Path] = []
        self._who = f"site {site}, " if site else ""  # progress lines name the site whose stage it is

    def has(self, stage: str, key: str) -> bool:
        """Whether ``run(stage, key, ...)`` would return a finished folder without computing."""
        return self.enabled and (self.root / stage / key / MARKER).is_file()

    def run(
        self,
        stage: str,
        key: str,
        compute: Callable[[Path], Any],
        *,
        digest_of: Callable[[Path], bool] | None = None,
    ) -> Stage:
        """Return the cached result of (stage, key), or call ``compute(folder)`` to write
        it into a fresh partial folder and publish it. ``digest_of`` picks the files that
        make up the stage's content digest (default: all; leave out files that carry the
        time of the run, such as reports)."""
        final = self.root / stage / key
        self.used.append(final)
        marker = final / MARKER
        if self.enabled and marker.is_file():
            record = json.loads(marker.read_text())
            log.info("%s%s: cached (%s)", self._who, stage, key)
            return Stage(stage, key, final, record["digest"], _decode(record["result"], final), True, 0.0)
        log.info("%s%s: computing (%s)", self._who, stage, key)
        started = time.perf_counter()
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_partials(final)
        tmp = final.with_name(f"{key}.partial-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            result = compute(tmp)
            digest = tree_digest(tmp, include=digest_of)
            record = {"stage": stage, "key": key, "digest": digest, "result": _encode(result, tmp),
                      "seconds": round(time.perf_counter() - started, 3)}
            (tmp / MARKER).write_text(json.dumps(record, indent=1))
            if final.exists():  # a stale folder without a marker, or caching disabled
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Stage(stage, key, final, digest, _decode(record["result"], final), False, record["seconds"])

    def prune(self, keep: Iterable[Path]) -> int:
        """Remove stage folders (and stray partials) not in ``keep``; returns how many."""
        keep = {Path(p).resolve() for p in keep}
        removed = 0
        if not self.root.is_dir():
            return 0
        for stage_dir in self.root.iterdir():
            if not stage_dir.is_dir():
                continue
            for entry in stage_dir.iterdir():
                if entry.is_dir() and entry.resolve() not in keep:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
        return removed


def _remove_partials(final: Path) -> None:
    for stale in final.parent.glob(f"{final.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
