from __future__ import annotations

import numpy as np
import pytest
from helpers import fake_ssn

from forewarn.records import deid

KEY = b"k" * 32


def test_pseudonyms_are_keyed_deterministic_and_positive():
    config = deid.DeidConfig(KEY, max_shift_days=30)
    ids, shifts = deid.pseudonymize([1, 2, 3], config)
    again, shifts_again = deid.pseudonymize([3, 2, 1], config)
    assert ids.dtype == np.int64 and (ids > 0).all()
    assert list(again) == list(ids[::-1]) and list(shifts_again) == list(shifts[::-1])
    other, _ = deid.pseudonymize([1, 2, 3], deid.DeidConfig(b"x" * 32))
    assert set(other).isdisjoint(ids)
    assert len(set(ids)) == 3


def test_shifts_stay_in_range():
    config = deid.DeidConfig(KEY, max_shift_days=5)
    _, shifts = deid.pseudonymize(range(2000), config)
    assert shifts.min() == -5 and shifts.max() == 5


def test_secret_is_never_shown_and_must_be_long_enough():
    config = deid.DeidConfig(KEY)
    assert "kkkk" not in repr(config) and "kkkk" not in str(config)
    with pytest.raises(ValueError, match="at least 16 bytes; got 5"):
        deid.DeidConfig(b"short")


def test_secret_required_outside_demo(monkeypatch, tmp_path):
    monkeypatch.delenv(deid.SECRET_ENV, raising=False)
    monkeypatch.delenv(deid.SECRET_FILE_ENV, raising=False)
    with pytest.raises(ValueError, match="no de-identification secret for site 'north'"):
        deid.load_secret("north")
    assert deid.load_secret("north", demo=True) != deid.load_secret("south", demo=True)
    monkeypatch.setenv(deid.SECRET_ENV, "from-the-environment-0123456789")
    assert deid.load_secret("north") == b"from-the-environment-0123456789"
    secret = tmp_path / "secret"
    secret.write_text("from-a-file-0123456789abcdef\n")
    monkeypatch.setenv(deid.SECRET_FILE_ENV, str(secret))
    assert deid.load_secret("north") == b"from-a-file-0123456789abcdef"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (f"SSN {fake_ssn('123', '45', '6789')}", "SSN pattern"),
        ("call (555) 123-4567", "phone number pattern"),
        ("555-123-4567", "phone number pattern"),
        ("mail jane.doe@example.org", "email address pattern"),
        ("MRN00012345", "identifier seen in the source"),
        ("LOCAL//Jane Doe", "identifier seen in the source"),
        ("LOCAL//lives at 12 Elm Street, apt 3", "identifier seen in the source"),
        ("call 555-0123", "phone number pattern"),
    ],
)
def test_scan_catches_each_kind_of_leak(value, kind):
    problems = deid.scan_strings([value], {"MRN00012345", "Jane Doe", "12 Elm Street"}, where="events.parquet:code")
    assert any(kind in p for p in problems)
    assert all(p.startswith("events.parquet:code: ") for p in problems)
    assert all(value not in p for p in problems)  # the message never repeats the leaked value


def test_scan_passes_clean_codes():
    clean = ["LOINC//4548-4", "SNOMED//44054006", "ICD10CM//E11.9", "Visit//OP", "RxNorm//6809", "MEDS_BIRTH"]
    assert deid.scan_strings(clean, {"MRN00012345", "Jane Doe", "12 Elm Street"}, where="x") == []


def test_gate_names_the_field():
    with pytest.raises(deid.PHILeakError, match=r"(?s)site 'north'.*events.parquet:code"):
        deid.gate(["events.parquet:code: a value matches the SSN pattern"], site="north")
    deid.gate([], site="north")
