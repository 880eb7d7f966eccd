"""A plain encoding for what crosses between the network's coordinator and a site.

``models.site_process`` passed its calls and answers as pickles until session 30, and
unpickling runs whatever code the bytes name: a site (or anything that could write to
its pipe) could have run code in the coordinator, and the coordinator in every site. A
message here is a JSON header and the raw bytes of its binary parts, and decoding
builds nothing but these types:

- None, bools, ints, strings, lists, and dicts with string keys (JSON's own);
- floats, NaN and the infinities included;
- tuples;
- bytes (a model);
- numeric arrays (dtype kinds b, i, u, f, little-endian; never object);
- tables (a ``pandas.DataFrame`` whose columns are numeric arrays or lists of strings,
  such as a site's feature columns);
- calibrators (``models.calibration.Calibrator``, through its own JSON form).

Anything else is refused when it is encoded, and a message that does not decode to
these types is refused with a ``ValueError`` that says where it broke. The layout::

    b"FWW1" | header length (8 bytes, little-endian) | header (UTF-8 JSON) | parts

where the header is ``{"value": ..., "parts": [length, ...]}`` and a binary part is
named in the value by its index (``{"$": "bytes", "part": 0}``).
"""

from __future__ import annotations

import json
import math
import struct
from typing import get_args

import numpy as np
import pandas as pd

from forewarn.models.calibration import Calibrator, Method

MAGIC = b"FWW1"
_NUMERIC = "biuf"
_TAGS = ("float", "tuple", "dict", "bytes", "array", "table", "calibrator")


def encode(value: object) -> bytes:
    """``value`` as one message (see the module's docstring for the types it may hold)."""
    parts: list[bytes] = []

    def part(data: bytes) -> int:
        parts.append(data)
        return len(parts) - 1

    def array(a: np.ndarray, where: str) -> dict:
        if a.dtype.kind not in _NUMERIC:
            raise TypeError(f"{where}: only numeric arrays cross (dtype kinds {_NUMERIC}); got dtype {a.dtype}.")
        shape = list(a.shape)
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))  # (a 0-d array comes back 1-d: shape kept)
        return {"$": "array", "dtype": a.dtype.str, "shape": shape, "part": part(a.tobytes())}

    def enc(v: object, where: str) -> object:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, (int, np.integer)) and not isinstance(v, np.bool_):
            return int(v)
        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, (float, np.floating)):
            v = float(v)
            return v if math.isfinite(v) else {"$": "float", "value": repr(v)}
        if isinstance(v, list):
            return [enc(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, tuple):
            return {"$": "tuple", "items": [enc(x, f"{where}[{i}]") for i, x in enumerate(v)]}
        if isinstance(v, dict):
            bad = [k for k in v if not isinstance(k, str)]
            if bad:
                raise TypeError(f"{where}: only dicts with string keys cross; got key {bad[0]!r}.")
            return {"$": "dict", "items": {k: enc(x, f"{where}[{k!r}]") for k, x in v.items()}}
        if isinstance(v, (bytes, bytearray, memoryview)):
            return {"$": "bytes", "part": part(bytes(v))}
        if isinstance(v, np.ndarray):
            return array(v, where)
        if isinstance(v, pd.DataFrame):
            if v.columns.has_duplicates:
                raise TypeError(f"{where}: a table crosses with distinct column names; got {list(v.columns)}.")
            columns = {}
            for name in v.columns:
                if not isinstance(name, str):
                    raise TypeError(f"{where}: only tables with string column names cross; got {name!r}.")
                s = v[name]
                if s.dtype.kind in _NUMERIC:
                    columns[name] = array(s.to_numpy(), f"{where}[{name!r}]")
                else:
                    values = s.astype(object).where(s.notna(), None).tolist()
                    bad = [x for x in values if x is not None and not isinstance(x, str)]
                    if bad:
                        raise TypeError(f"{where}[{name!r}]: a table's column crosses as numbers or strings; got "
                                        f"{type(bad[0]).__name__}.")
                    columns[name] = values
            return {"$": "table", "rows": int(len(v)), "columns": columns}
        if isinstance(v, Calibrator):
            return {"$": "calibrator", "value": enc(v.to_json(), where)}
        raise TypeError(f"{where}: a {type(v).__name__} does not cross between a site and the coordinator (only "
                        "None, bools, numbers, strings, lists, tuples, dicts with string keys, bytes, numeric arrays, "
                        "tables and calibrators do).")

    header = json.dumps({"value": enc(value, "message"), "parts": [len(p) for p in parts]}, allow_nan=False,
                        separators=(",", ":")).encode()
    return b"".join([MAGIC, struct.pack("<Q", len(header)), header, *parts])


MAX_DEPTH = 64  # containers within containers: a site's calls and answers nest 4 deep at most


def _refuse_constant(name: str):
    raise ValueError(f"the header holds the bare constant {name}, which this encoding never writes.")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the header holds the number {text}, which no float holds; non-finite floats are tagged.")
    return value


def _depth(header: bytes) -> int:
    """The deepest nesting of JSON containers in ``header`` (brackets outside strings)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in header:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def decode(message: bytes) -> object:
    """The value that :func:`encode` wrote; a ``ValueError`` naming where a message breaks
    (and nothing else, whatever the bytes)."""
    try:
        return _decode(message)
    except ValueError:
        raise
    except (TypeError, OverflowError, RecursionError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"the message does not decode: {type(exc).__name__} ({exc}).") from None


def _decode(message: bytes) -> object:
    data = memoryview(message)
    if bytes(data[:4]) != MAGIC or len(data) < 12:
        raise ValueError(f"not a Forewarn wire message: it should start with {MAGIC!r} and a header length; got "
                         f"{bytes(data[:12])!r}.")
    (size,) = struct.unpack("<Q", data[4:12])
    if 12 + size > len(data):
        raise ValueError(f"the message is cut short: its header says {size} bytes, {len(data) - 12} follow.")
    text = bytes(data[12:12 + size])
    if _depth(text) > MAX_DEPTH:
        raise ValueError(f"the message nests more than {MAX_DEPTH} containers deep; a site's messages never do.")
    try:
        header = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the message's header is not JSON: {exc}.") from None
    if not isinstance(header, dict) or set(header) != {"value", "parts"} or not isinstance(header["parts"], list):
        raise ValueError("the message's header should hold 'value' and 'parts' only.")
    lengths = header["parts"]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in lengths):
        raise ValueError("the message's part lengths should be whole numbers of bytes.")
    if 12 + size + sum(lengths) != len(data):
        raise ValueError(f"the message's parts should take {sum(lengths)} bytes after the header; "
                         f"{len(data) - 12 - size} follow.")
    starts = np.cumsum([12 + size, *lengths]).tolist()
    parts = [data[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]
    used: set[int] = set()

    def part(v: dict, where: str) -> memoryview:
        i = v.get("part")
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(parts) or i in used:
            raise ValueError(f"{where}: names part {i!r}; the message has parts 0 to {len(parts) - 1}, each named once.")
        used.add(i)
        return parts[i]

    def fields(v: dict, keys: set[str], where: str) -> None:
        if set(v) != keys | {"$"}:
            raise ValueError(f"{where}: a {v['$']!r} holds {sorted(keys)}; got {sorted(k for k in v if k != '$')}.")

    def array(v: dict, where: str) -> np.ndarray:
        fields(v, {"dtype", "shape", "part"}, where)
        try:
            dtype = np.dtype(v["dtype"]) if isinstance(v["dtype"], str) else None
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind not in _NUMERIC or dtype.byteorder == ">" or dtype.str != v["dtype"]:
            raise ValueError(f"{where}: an array's dtype must be numeric and little-endian (kinds {_NUMERIC}); got "
                             f"{v['dtype']!r}.")
        shape = v["shape"]
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                  for n in shape):
            raise ValueError(f"{where}: an array's shape must be a list of whole numbers; got {shape!r}.")
        raw = part(v, where)
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"{where}: an array of shape {shape} and dtype {dtype} takes "
                             f"{math.prod(shape) * dtype.itemsize} bytes; its part has {len(raw)}.")
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()

    def dec(v: object, where: str) -> object:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [dec(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if not isinstance(v, dict) or v.get("$") not in _TAGS:
            raise ValueError(f"{where}: every object in a message is tagged with one of {', '.join(_TAGS)}; got "
                             f"{v if not isinstance(v, dict) else v.get('$')!r}.")
        tag = v["$"]
        if tag == "float":
            fields(v, {"value"}, where)
            if v["value"] not in ("nan", "inf", "-inf"):
                raise ValueError(f"{where}: a tagged float is 'nan', 'inf' or '-inf'; got {v['value']!r}.")
            return float(v["value"])
        if tag == "tuple":
            fields(v, {"items"}, where)
            if not isinstance(v["items"], list):
                raise ValueError(f"{where}: a tuple's items are a list.")
            return tuple(dec(x, f"{where}[{i}]") for i, x in enumerate(v["items"]))
        if tag == "dict":
            fields(v, {"items"}, where)
            if not isinstance(v["items"], dict):
                raise ValueError(f"{where}: a dict's items are an object.")
            return {k: dec(x, f"{where}[{k!r}]") for k, x in v["items"].items()}
        if tag == "bytes":
            fields(v, {"part"}, where)
            return bytes(part(v, where))
        if tag == "array":
            return array(v, where)
        if tag == "table":
            fields(v, {"rows", "columns"}, where)
            rows, columns = v["rows"], v["columns"]
            if (not isinstance(rows, int) or isinstance(rows, bool) or not 0 <= rows < 2**63
                    or not isinstance(columns, dict)):
                raise ValueError(f"{where}: a table holds a row count and an object of columns.")
            out = {}
            for name, col in columns.items():
                at = f"{where}[{name!r}]"
                if isinstance(col, list):
                    if not all(x is None or isinstance(x, str) for x in col):
                        raise ValueError(f"{at}: a table's listed column holds strings (or null) only.")
                    values = pd.Series(col, dtype=object)  # None stays None; no rows stay strings
                elif isinstance(col, dict) and col.get("$") == "array":
                    values = array(col, at)
                    if values.ndim != 1:
                        raise ValueError(f"{at}: a table's column is one-dimensional; got shape {list(values.shape)}.")
                else:
                    raise ValueError(f"{at}: a table's column is a list of strings or a tagged array.")
                if len(values) != rows:
                    raise ValueError(f"{at}: the table has {rows} rows; this column has {len(values)}.")
                out[name] = values
            return pd.DataFrame(out, index=pd.RangeIndex(rows))
        # calibrator
        fields(v, {"value"}, where)
        return _calibrator(dec(v["value"], where), where)

    value = dec(header["value"], "message")
    if len(used) != len(parts):
        raise ValueError(f"the message carries {len(parts) - len(used)} binary part(s) that its value does not name.")
    return value


def _calibrator(body: object, where: str) -> Calibrator:
    """A calibrator from its JSON form, every field checked: its method, knots and values
    (equal-length lists of finite numbers) and its two coefficients (finite numbers)."""
    keys = {"method", "x", "y", "a", "b"}
    if not isinstance(body, dict) or set(body) != keys:
        raise ValueError(f"{where}: a calibrator holds {sorted(keys)}; got "
                         f"{sorted(body) if isinstance(body, dict) else type(body).__name__}.")
    if body["method"] not in get_args(Method):
        raise ValueError(f"{where}: a calibrator's method is one of {get_args(Method)}; got {body['method']!r}.")

    def number(x: object) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    knots, values = body["x"], body["y"]
    if not (isinstance(knots, list) and isinstance(values, list) and len(knots) == len(values)
            and all(number(x) for x in knots + values)):
        raise ValueError(f"{where}: a calibrator's knots and values are lists of finite numbers of one length.")
    if not (number(body["a"]) and number(body["b"])):
        raise ValueError(f"{where}: a calibrator's coefficients a and b are finite numbers.")
    return Calibrator.from_json(body)
