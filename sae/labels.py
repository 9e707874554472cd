"""Feature labels: words attached to features, with where each label came from.

``labels.json`` beside an SAE::

    {"version": 1, "labels": {"17": {"label": "red", "score": 0.83, "source": "ground-truth", "write": 0.71,
                                     "replace": 0.875, "paste": 0.5}}}

``source`` is one of ``ground-truth``, ``prompt-words``, ``clip`` (zero-shot words for the feature's picture),
``user``. Labels a user edited by hand are kept
when labels are computed again. An optional ``write`` says how well *painting* the feature writes its label,
as ground truth can measure it: the cosine between the feature's painted direction (sigma_f d_f) and the
concept's mean difference at the block. A feature can read a concept well (its score) and write it poorly.
An optional ``replace`` is the share of trial ``replace`` edits of the feature (its prototype overwriting a
rectangle) in which ground truth's judges saw the label painted there; ``paste`` the same for ``paste`` edits (its
top example moved onto the rectangle).
"""

from __future__ import annotations

import json
import math
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .errors import SAEError

LABELS_NAME = "labels.json"
SOURCES = ("ground-truth", "prompt-words", "clip", "user")


@dataclass
class Label:
    label: str
    score: float = 0.0
    source: str = "user"
    write: float | None = None  # how well painting the feature writes its label, where ground truth measured it
    replace: float | None = None  # share of trial ``replace`` edits judged to paint its label, where measured
    paste: float | None = None  # the same for trial ``paste`` edits


def load_labels(folder: str | Path) -> dict[int, Label]:
    """Labels of the SAE in ``folder``; an empty dict when it has no ``labels.json``."""
    file = Path(folder) / LABELS_NAME
    if not file.exists():
        return {}
    try:
        data = json.loads(file.read_text())
        entries = data["labels"]
        return {int(key): Label(str(v["label"]), float(v.get("score", 0.0)), str(v.get("source", "user")),
                                _optional(v, "write"), _optional(v, "replace"), _optional(v, "paste"))
                for key, v in entries.items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SAEError(f"'{file}' is not a valid labels file ({exc!r}); expected "
                       '{"version": 1, "labels": {"<feature>": {"label": ..., "score": ..., "source": ..., '
                       '"write", "replace", "paste": <numbers, optional>}}}') from None


def _optional(entry: dict, key: str) -> float | None:
    return None if entry.get(key) is None else float(entry[key])


def save_labels(folder: str | Path, labels: dict[int, Label]) -> None:
    for feature, label in labels.items():
        if label.source not in SOURCES:
            raise SAEError(f"label source of feature {feature} is {label.source!r}; allowed: {', '.join(SOURCES)}")
    payload = {"version": 1, "labels": {str(f): _entry(labels[f]) for f in sorted(labels)}}
    file = Path(folder) / LABELS_NAME
    tmp = file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(file)


def _entry(label: Label) -> dict:
    return {key: value for key, value in asdict(label).items() if value is not None or key in ("label", "score", "source")}


# ----------------------------------------------------------------------------------------------------------------
# Offline labels from prompt-word association (`sae label`).

STOPWORDS = frozenset("a an the and or of on in at with to from by for is are its it this that".split())


def prompt_words(prompt: str) -> set[str]:
    words = (word.strip(string.punctuation).lower() for word in prompt.split())
    return {word for word in words if word and word not in STOPWORDS}


def prompt_feature_max(sae, store, batch_size: int = 4096) -> torch.Tensor:
    """[n_prompts, n_features]: each feature's strongest activation anywhere (any step, any location) per prompt."""
    from .metrics import iter_codes

    n_prompts = max(store.manifest.n_prompts, len(store.prompts()))
    strongest = torch.zeros(n_prompts, sae.n_features)
    for values, indices, index, _ in iter_codes(sae, store, batch_size):
        rows = index[:, 0].long()[:, None].expand_as(indices)
        flat = rows * sae.n_features + indices
        strongest.view(-1).scatter_reduce_(0, flat.flatten(), values.flatten(), reduce="amax")
    return strongest


def word_association_labels(strongest: torch.Tensor, prompts: list[str], top_fraction: float = 0.1,
                            min_top: int = 3, max_words: int = 3, min_count: int = 2) -> dict[int, Label]:
    """Which prompt words make each feature fire: words over-represented among its strongest prompts, by
    specificity rather than frequency.

    The feature's top prompts are its ``top_fraction`` strongest (at least ``min_top``) where it fired. For word w,
    with c_top of the top prompts and c_all of all prompts holding it:

    - lift = (p_top(w) - p_all(w)) / (1 - p_all(w)): 1 when every top prompt holds w, 0 when w is no more frequent
      among the top prompts than overall (the base rate);
    - recall = c_top / c_all: the share of w's prompts that are among the top prompts, so a word found in many
      prompts ("photo", "red") does not beat one whose prompts all make the feature fire ("dog");
    - score = the harmonic mean of lift and recall, for words in at least ``min_count`` top prompts.

    The label is the best word, followed by words scoring at least 0.8 x the best (up to ``max_words``); among
    equal scores, alphabetical order.
    """
    words_of = [prompt_words(p) for p in prompts]
    vocabulary = sorted(set().union(*words_of)) if words_of else []
    if not vocabulary:
        return {}
    holds = torch.tensor([[word in words for word in vocabulary] for words in words_of], dtype=torch.float32)
    count_all = holds.sum(0)
    base = count_all / len(prompts)
    n_top = min(max(min_top, math.ceil(top_fraction * len(prompts))), len(prompts))
    labels = {}
    for start in range(0, strongest.shape[1], 1024):  # features in blocks: [features, prompts] at a time
        column = strongest[: len(prompts), start:start + 1024].float()
        top = column.topk(n_top, dim=0)
        in_top = torch.zeros(column.shape[1], len(prompts))
        in_top.scatter_(1, top.indices.T, (top.values.T > 0).float())  # a feature's top prompts where it fired
        size = in_top.sum(1, keepdim=True)
        count_top = in_top @ holds
        lift = ((count_top / size.clamp_min(1) - base) / (1 - base).clamp_min(1e-6)).clamp_min(0)
        recall = count_top / count_all.clamp_min(1)
        score = 2 * lift * recall / (lift + recall).clamp_min(1e-9)
        score[(base >= 1).expand_as(score) | (count_top < torch.clamp(size, max=min_count))] = 0
        score[size[:, 0] < 2] = 0
        values, order = torch.sort(score, dim=1, descending=True, stable=True)  # ties: alphabetical
        values, order = values[:, :max_words], order[:, :max_words]
        for row in (values[:, 0] > 0).nonzero().flatten().tolist():
            top_score = float(values[row, 0])
            chosen = [vocabulary[i] for v, i in zip(values[row].tolist(), order[row].tolist()) if v >= 0.8 * top_score]
            labels[start + row] = Label(" ".join(chosen), round(top_score, 4), "prompt-words")
    return labels


def merge_labels(existing: dict[int, Label], computed: dict[int, Label]) -> dict[int, Label]:
    """Computed labels, except where a label a user wrote or ground truth gave already exists."""
    kept = {f: label for f, label in existing.items() if label.source in ("user", "ground-truth")}
    return {**computed, **kept}
