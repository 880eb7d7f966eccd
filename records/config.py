"""Typed, strict configuration shared by every package: one way to say what is wrong."""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    """Frozen and closed: an unknown key is an error that names the allowed keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def explain(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem, ``  - loc: message``; unknown keys list the allowed keys there."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  - {loc}: unknown key; allowed keys here are {sorted(_model_at(model, err['loc'][:-1]).model_fields)}")
        else:
            lines.append(f"  - {loc}: {err['msg']}")
    return "\n".join(lines)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel]:
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            break
        nxt = _inner_model(field.annotation)
        if nxt is None:
            break
        model = nxt
    return model


def _inner_model(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, tuple, dict):
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None
