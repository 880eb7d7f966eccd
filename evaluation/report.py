"""The self-contained HTML report: aggregates and embedded figures, no patient rows."""

from __future__ import annotations

import base64
from importlib import resources
from pathlib import Path

import jinja2

TEMPLATES = "forewarn.evaluation.templates"


def render(context: dict) -> str:
    """Render the report; ``context['images']`` holds PNG bytes, embedded as base64."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string((resources.files(TEMPLATES) / "report.html.j2").read_text())
    images = {k: base64.b64encode(v).decode() for k, v in context["images"].items()}
    return template.render({**context, "images": images})


def write_report(context: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(render(context), encoding="utf-8")
    tmp.replace(path)
    return path
