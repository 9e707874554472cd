"""Feature labels: words attached to features, with where each label came from.

``labels.json`` beside an SAE::

    {"version": 1, "labels": {"17": {"label": "red", "score": 0.83, "source": "ground-truth"}}}

``source`` is one of ``ground-truth``, ``prompt-words``, ``user``. Labels a user edited by hand are kept
when labels are computed again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import SAEError

LABELS_NAME = "labels.json"
SOURCES = ("ground-truth", "prompt-words", "user")


@dataclass
class Label:
    label: str
    score: float = 0.0
    source: str = "user"


def load_labels(folder: str | Path) -> dict[int, Label]:
    """Labels of the SAE in ``folder``; an empty dict when it has no ``labels.json``."""
    file = Path(folder) / LABELS_NAME
    if not file.exists():
        return {}
    try:
        data = json.loads(file.read_text())
        entries = data["labels"]
        return {int(key): Label(str(v["label"]), float(v.get("score", 0.0)), str(v.get("source", "user")))
                for key, v in entries.items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SAEError(f"'{file}' is not a valid labels file ({exc!r}); expected "
                       '{"version": 1, "labels": {"<feature>": {"label": ..., "score": ..., "source": ...}}}') from None


def save_labels(folder: str | Path, labels: dict[int, Label]) -> None:
    for feature, label in labels.items():
        if label.source not in SOURCES:
            raise SAEError(f"label source of feature {feature} is {label.source!r}; allowed: {', '.join(SOURCES)}")
    payload = {"version": 1, "labels": {str(f): asdict(labels[f]) for f in sorted(labels)}}
    file = Path(folder) / LABELS_NAME
    tmp = file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(file)
