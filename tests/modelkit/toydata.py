"""Toy labelled data for the toolkit's tests: three topics a frozen encoder tells apart."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["TOPICS", "write_data"]

TOPICS = {
    "technical": ["SQL join {i} rows", "python list index error {i}", "docker container port {i}"],
    "medical": [
        "fever and headache for {i} days",
        "dose of ibuprofen {i} mg",
        "rash after vaccine {i}",
    ],
    "general": ["weather tomorrow in city {i}", "set an alarm for {i} am", "recipe with {i} eggs"],
}


def write_data(path: Path, per_label: int = 12) -> Path:
    """Write `per_label` rows of each topic, with three subjects each, to `path`."""
    lines = []
    for label, templates in TOPICS.items():
        for i in range(per_label):
            text = templates[i % len(templates)].format(i=i)
            lines.append(json.dumps({"text": text, "label": label, "subject": f"{label}-{i % 3}"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
