"""``models.wire``: the plain encoding of what crosses between the coordinator and a site."""

from __future__ import annotations

import json
import math
import os
import pickle
import struct

import numpy as np
import pandas as pd
import pytest

from forewarn.models import wire
from forewarn.models.calibration import Calibrator


def _header(message: bytes) -> dict:
    (size,) = struct.unpack("<Q", message[4:12])
    return json.loads(message[12:12 + size])


def _with_header(message: bytes, header: dict) -> bytes:
    """``message`` with its header replaced (its parts kept)."""
    (size,) = struct.unpack("<Q", message[4:12])
    new = json.dumps(header).encode()
    return wire.MAGIC + struct.pack("<Q", len(new)) + new + message[12 + size:]


def test_every_type_a_site_exchanges_comes_back_equal_and_of_its_own_type():
    calibrator = Calibrator("isotonic", (0.0, 0.25, 1.0), (0.01, 0.2, 0.9))
    table = pd.DataFrame({"name": ["a/code/count/full", "b/value/last/365"], "description": ["A", None],
                          "subjects": np.array([12, 40], np.int64), "share": np.array([0.5, 0.25], np.float32)})
    value = ["boost", [b"\x00model\xff", 10, {"eta": 0.1, "max_depth": 6, "missing": None, "nan": math.nan}, 7],
             {"min_cell": 11, "fold": (0, 1), "calibrator": calibrator, "flags": np.array([True, False]),
              "grad": np.array([[1.5, -2.0], [0.0, 3.25]]), "inf": -math.inf, "columns": table}]
    back = wire.decode(wire.encode(value))
    assert back[0] == "boost" and back[1][:2] == [b"\x00model\xff", 10] and back[1][3] == 7
    assert back[1][2]["eta"] == 0.1 and back[1][2]["missing"] is None and math.isnan(back[1][2]["nan"])
    options = back[2]
    assert options["fold"] == (0, 1) and isinstance(options["fold"], tuple)  # a tuple stays a tuple, a list a list
    assert options["calibrator"] == calibrator and options["inf"] == -math.inf and options["min_cell"] == 11
    assert options["flags"].dtype == bool and options["flags"].tolist() == [True, False]
    np.testing.assert_array_equal(options["grad"], [[1.5, -2.0], [0.0, 3.25]])
    assert options["grad"].flags.writeable  # a copy, not a view of the message
    # string columns come back as Python strings (object dtype), a missing one as None
    expected = table.astype({"name": object, "description": object})
    expected.loc[1, "description"] = None
    pd.testing.assert_frame_equal(options["columns"], expected)
    assert options["columns"]["description"].tolist() == ["A", None]


def test_the_layout_is_a_json_header_and_raw_parts():
    message = wire.encode(["ok", b"abc"])
    assert message[:4] == b"FWW1"
    assert _header(message) == {"value": ["ok", {"$": "bytes", "part": 0}], "parts": [3]}
    assert message.endswith(b"abc")
    # numpy scalars cross as plain numbers; a big-endian array as little-endian
    assert _header(wire.encode([np.int64(3), np.float32(0.5), np.bool_(True)]))["value"] == [3, 0.5, True]
    big = np.array([1, 2], dtype=">i4")
    back = wire.decode(wire.encode(big))
    assert back.dtype == np.dtype("<i4") and back.tolist() == [1, 2]


@pytest.mark.parametrize("value, match", [
    (np.array(["a", None], dtype=object), r"message: only numeric arrays cross .* got dtype object"),
    ({1: "a"}, r"message: only dicts with string keys cross; got key 1"),
    ({"x": {"a", "b"}}, r"message\['x'\]: a set does not cross"),
    ([Calibrator, 1], r"message\[0\]: a type does not cross"),
    (pd.DataFrame({"c": [1, "a"]}), r"message\['c'\]: a table's column crosses as numbers or strings; got int"),
])
def test_what_the_encoding_does_not_carry_is_refused_where_it_is(value, match):
    with pytest.raises(TypeError, match=match):
        wire.encode(value)


def test_a_pickle_is_refused_and_never_run(tmp_path):
    """The reason for the encoding: unpickling runs what the bytes name."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with pytest.raises(ValueError, match=r"not a Forewarn wire message: it should start with b'FWW1'"):
        wire.decode(pickle.dumps(("ok", Payload())))
    assert not marker.exists()


def test_a_message_that_breaks_the_layout_is_refused_with_where():
    good = wire.encode(["ok", np.arange(3, dtype=np.int64), b"xy"])
    header = _header(good)
    array = header["value"][1]
    cases = {
        "cut short": (good[:-1], r"parts should take 26 bytes after the header; 25 follow"),
        "a header longer than the message": (good[:4] + struct.pack("<Q", 10**6) + good[12:],
                                             r"cut short: its header says 1000000 bytes"),
        "an untagged object": (_with_header(good, {**header, "value": {"a": 1}}),
                               r"message: every object in a message is tagged with one of .*; got None"),
        "an unknown tag": (_with_header(good, {**header, "value": {"$": "pickle", "data": "x"}}),
                           r"tagged with one of float, tuple, .*; got 'pickle'"),
        "an object array": (_with_header(good, {**header, "value": ["ok", {**array, "dtype": "|O"}, header["value"][2]]}),
                            r"message\[1\]: an array's dtype must be numeric and little-endian .* got '\|O'"),
        "a wrong array size": (_with_header(good, {**header, "value": ["ok", {**array, "shape": [4]},
                                                                        header["value"][2]]}),
                               r"message\[1\]: an array of shape \[4\] and dtype int64 takes 32 bytes; its part has 24"),
        "a part named twice": (_with_header(good, {**header, "value": ["ok", array, {"$": "bytes", "part": 0}]}),
                               r"message\[2\]: names part 0; .* each named once"),
        "a part named by none": (_with_header(good, {**header, "value": ["ok", array, None]}),
                                 r"carries 1 binary part\(s\) that its value does not name"),
        "a bare NaN": (wire.MAGIC + struct.pack("<Q", 30) + b'{"value": NaN,   "parts": [] }',
                       r"bare constant NaN"),
        "an extra field": (_with_header(good, {**header, "value": {"$": "bytes", "part": 0, "code": "x"}}),
                           r"a 'bytes' holds \['part'\]; got \['code', 'part'\]"),
        "a calibrator of no known method": (
            _with_header(wire.encode(Calibrator("sigmoid", a=1.0, b=2.0)),
                         {"value": {"$": "calibrator", "value": {"$": "dict", "items": {
                             "method": "eval", "x": [], "y": [], "a": 0.0, "b": 1.0}}}, "parts": []}),
            r"a calibrator's method is one of \('isotonic', 'sigmoid', 'none'\); got 'eval'"),
    }
    for message, match in cases.values():
        with pytest.raises(ValueError, match=match):
            wire.decode(message)
    assert wire.decode(good)[2] == b"xy"


def test_zero_dimensional_arrays_and_empty_tables_keep_their_shape_and_types():
    back = wire.decode(wire.encode([np.array(2.5), pd.DataFrame({"name": pd.Series([], dtype=object)}),
                                    pd.DataFrame({"name": ["a", None]})]))
    assert back[0].shape == () and float(back[0]) == 2.5
    assert back[1]["name"].dtype == object and len(back[1]) == 0
    assert back[2]["name"].tolist() == ["a", None]  # None stays None, not NaN
    with pytest.raises(TypeError, match=r"message: a table crosses with distinct column names; got \['a', 'a'\]"):
        wire.encode(pd.DataFrame([[1, 2]], columns=["a", "a"]))


def test_whatever_the_bytes_only_a_value_error_comes_out():
    """Deep nesting, numbers no float holds, malformed calibrators: refused as ValueError,
    never a RecursionError, OverflowError or TypeError from inside the decoder."""
    def message(value: str) -> bytes:
        header = ('{"value":' + value + ',"parts":[]}').encode()
        return wire.MAGIC + struct.pack("<Q", len(header)) + header

    def calibrator(**body) -> str:
        fields = {"method": "sigmoid", "x": [], "y": [], "a": 0.0, "b": 1.0} | body
        return json.dumps({"$": "calibrator", "value": {"$": "dict", "items": fields}})

    cases = [
        (message("[" * 70 + "]" * 70), r"nests more than 64 containers deep"),
        (message("[" * 5000 + "]" * 5000), r"nests more than 64 containers deep"),
        (message("1e400"), r"the number 1e400, which no float holds"),
        (message('{"$": "table", "rows": ' + str(2**70) + ', "columns": {}}'), r"a table holds a row count"),
        (message(calibrator(a=10**400)), r"the message does not decode: OverflowError"),
        (message(calibrator(x=["a", "b"], y=[0.1, 0.2])), r"knots and values are lists of finite numbers of one length"),
        (message(calibrator(x=[0.1], y=[0.1, 0.2])), r"knots and values are lists of finite numbers of one length"),
        (message(calibrator(b=True)), r"coefficients a and b are finite numbers"),
        (message(json.dumps({"$": "calibrator", "value": {"$": "dict", "items": {"method": "sigmoid"}}})),
         r"a calibrator holds \['a', 'b', 'method', 'x', 'y'\]; got \['method'\]"),
    ]
    for data, match in cases:
        with pytest.raises(ValueError, match=match):
            wire.decode(data)
    assert wire.decode(message(calibrator(a=-1.5, b=2.0))) == Calibrator("sigmoid", a=-1.5, b=2.0)
