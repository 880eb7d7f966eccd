"""De-identification at the pull boundary.

Everything a pull writes passes through here first:

- source person ids become keyed-hash pseudonyms (HMAC-SHA256 with a per-site
  secret that comes from the environment or a file and is never logged or written);
- every event of a subject moves by the same per-subject date offset, derived from
  the same keyed hash, so intervals within a subject are exact and a rerun gives the
  same pseudonyms and offsets;
- ages over 89 collapse to 90 (the birth event moves so that the subject is 90 at
  their last event);
- only allow-listed fields survive: names, addresses, telecom, identifiers and free
  text never enter the event table;
- a PHI scan gate fails the pull if anything in the output looks like an identifier.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SECRET_ENV = "FOREWARN_DEID_SECRET"
SECRET_FILE_ENV = "FOREWARN_DEID_SECRET_FILE"
MAX_AGE_YEARS = 90
MIN_SECRET_BYTES = 16


class PHILeakError(RuntimeError):
    """Raised by the PHI scan gate when an output looks like it holds an identifier."""


@dataclass(frozen=True)
class DeidConfig:
    """How a site de-identifies. ``secret`` is never printed: its repr is masked."""

    secret: bytes
    max_shift_days: int = 365

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"the de-identification secret must be at least {MIN_SECRET_BYTES} bytes; "
                f"got {len(self.secret)}. Generate one with `python -c 'import secrets; "
                "print(secrets.token_hex(32))'`."
            )
        if not 0 <= self.max_shift_days <= 3650:
            raise ValueError(f"max_shift_days must be in [0, 3650]; got {self.max_shift_days!r}.")

    def __repr__(self) -> str:
        return f"DeidConfig(secret=<{len(self.secret)} bytes hidden>, max_shift_days={self.max_shift_days})"

    __str__ = __repr__


def load_secret(site: str, *, demo: bool = False, secret_file: Path | None = None) -> bytes:
    """The per-site secret: ``secret_file``, else ``$FOREWARN_DEID_SECRET_FILE``, else
    ``$FOREWARN_DEID_SECRET``. In demo mode a fixed, public per-site secret is used,
    which is fine for synthetic data only."""
    path = secret_file or (Path(os.environ[SECRET_FILE_ENV]) if os.environ.get(SECRET_FILE_ENV) else None)
    if path is not None:
        try:
            value = path.read_bytes().strip()
        except OSError as exc:
            raise ValueError(
                f"cannot read the de-identification secret file {str(path)!r} for site {site!r}: "
                f"{exc.strerror}. Point {SECRET_FILE_ENV} at a readable file."
            ) from None
        return value
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV].encode()
    if demo:
        return f"forewarn-demo-public-secret::{site}".encode()
    raise ValueError(
        f"no de-identification secret for site {site!r}: set {SECRET_ENV} or {SECRET_FILE_ENV} "
        "(a file holding at least 16 random bytes) before pulling real data."
    )


def pseudonymize(source_ids: Iterable[object], config: DeidConfig) -> tuple[np.ndarray, np.ndarray]:
    """Keyed-hash pseudonyms and per-subject day offsets for ``source_ids``.

    Returns ``(subject_ids, shift_days)``: subject ids are positive int64 taken from the
    first 8 bytes of HMAC-SHA256(secret, "id:" + source id); the offset, uniform in
    [-max_shift_days, +max_shift_days], from the next 4 bytes. Same key and id, same
    result; without the key neither can be inverted.
    """
    key = config.secret
    width = 2 * config.max_shift_days + 1
    ids = []
    shifts = []
    for source_id in source_ids:
        digest = hmac.new(key, b"id:" + str(source_id).encode(), hashlib.sha256).digest()
        ids.append(int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF)
        shifts.append(int.from_bytes(digest[8:12], "big") % width - config.max_shift_days)
    return np.asarray(ids, dtype=np.int64), np.asarray(shifts, dtype=np.int32)


# --- PHI scan gate -----------------------------------------------------------------

PATTERNS: dict[str, re.Pattern[str]] = {
    "SSN": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "phone number": re.compile(r"(?:\(\d{3}\)\s?|\b\d{3}[-.\s])\d{3}[-.]\d{4}\b|\b\d{3}-\d{4}\b"),
    "email address": re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"),
}
_TOKEN = re.compile(r"[A-Za-z0-9']+")


def scan_strings(
    values: Iterable[str], identifiers: set[str], *, where: str
) -> list[str]:
    """Problems found in ``values`` (each distinct output string of one field).

    A value leaks when it matches an identifier pattern, or when any run of its words
    equals an identifier met in the source during the pull (MRNs, names, address
    lines, ...), compared word by word and case-insensitively. Messages name the field and the kind of
    leak, never the leaked value itself.
    """
    problems = []
    # Identifiers as word sequences: "12 Elm Street" is found inside "LOCAL//12 Elm Street apt".
    wanted = {" ".join(t.lower() for t in _TOKEN.findall(i)) for i in identifiers if i}
    wanted.discard("")
    lengths = sorted({w.count(" ") + 1 for w in wanted})
    for value in values:
        if value is None:
            continue
        for kind, pattern in PATTERNS.items():
            if pattern.search(value):
                problems.append(f"{where}: a value matches the {kind} pattern")
        if wanted:
            tokens = [t.lower() for t in _TOKEN.findall(value)]
            grams = {" ".join(tokens[i : i + n]) for n in lengths for i in range(len(tokens) - n + 1)}
            if grams & wanted:
                problems.append(f"{where}: a value equals an identifier seen in the source")
    return sorted(set(problems))


def gate(problems: list[str], *, site: str) -> None:
    """Fail the pull when the scan found anything."""
    if problems:
        listed = "\n  - ".join(problems)
        raise PHILeakError(
            f"PHI scan gate failed for site {site!r}; the output was not published:\n  - {listed}\n"
            "Drop the field in the connector's allow-list, or map it to a code."
        )
