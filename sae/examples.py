"""Top examples: for each feature, the strongest (prompt, step, location, value) records, for a gallery.

``top_examples.json`` (by default inside the SAE folder)::

    {"17": [{"prompt": "a red circle", "prompt_id": 3, "seed": 3, "step": 0, "row": 5, "col": 9, "value": 4.2}, ...]}

Records are strongest first; by default one record per prompt (its strongest location and step). ``seed`` is the
seed the collection generated that prompt with (its seed + prompt id), so the example can be made again (``paste``
edits do; files made before it was recorded have none).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import SAEError
from .metrics import iter_codes
from .model import SAE
from .store import ActivationStore

TOP_EXAMPLES_NAME = "top_examples.json"


@torch.no_grad()
def top_examples(sae: SAE, store: ActivationStore, per_feature: int = 8, distinct_prompts: bool = True,
                 batch_size: int = 4096, max_vectors: int | None = None) -> dict[int, list[dict]]:
    """The ``per_feature`` strongest records of every feature that fired (features that never fired are left out)."""
    if per_feature < 1:
        raise SAEError(f"per-feature is {per_feature}; it must be >= 1")
    pool = per_feature * 8 if distinct_prompts else per_feature
    best_values = torch.zeros(sae.n_features, 0)
    best_ordinals = torch.zeros(sae.n_features, 0, dtype=torch.long)
    seen = 0
    for values, indices, _, _ in iter_codes(sae, store, batch_size, max_vectors):
        dense = torch.zeros(values.shape[0], sae.n_features).scatter_(1, indices, values).T
        ordinals = torch.arange(seen, seen + values.shape[0]).expand(sae.n_features, -1)
        seen += values.shape[0]
        candidates = torch.cat([best_values, dense], 1)
        keep = candidates.topk(min(pool, candidates.shape[1]), dim=1)
        best_values = keep.values
        best_ordinals = torch.gather(torch.cat([best_ordinals, ordinals], 1), 1, keep.indices)
    index = _index_rows(store, best_ordinals.unique())
    prompts = store.prompts()
    return {feature: _records(best_values[feature], [index[o] for o in best_ordinals[feature].tolist()], prompts,
                              per_feature, distinct_prompts, store.manifest.seed)
            for feature in range(sae.n_features) if best_values.shape[1] and float(best_values[feature, 0]) > 0}


def _index_rows(store: ActivationStore, ordinals: torch.Tensor) -> dict[int, list[int]]:
    """(prompt id, step, row, col) of the vectors at the given positions of the store's shard order."""
    rows, start = {}, 0
    for number in range(len(store.shards)):
        length = store.lengths[number]
        inside = ordinals[(ordinals >= start) & (ordinals < start + length)]
        if inside.numel():
            _, index = store.read(number)
            rows.update({int(o): index[int(o) - start].tolist() for o in inside})
        start += length
    return rows


def _records(values: torch.Tensor, index: list[list[int]], prompts: list[str], per_feature: int,
             distinct_prompts: bool, seed: int) -> list[dict]:
    records, seen = [], set()
    for value, (prompt_id, step, row, col) in zip(values.tolist(), index):
        if value <= 0 or (distinct_prompts and prompt_id in seen):
            continue
        seen.add(prompt_id)
        records.append({"prompt": prompts[prompt_id] if prompt_id < len(prompts) else "", "prompt_id": prompt_id,
                        "seed": seed + prompt_id, "step": step, "row": row, "col": col, "value": round(value, 5)})
        if len(records) == per_feature:
            break
    return records


def save_top_examples(file: str | Path, examples: dict[int, list[dict]]) -> Path:
    path = Path(file)
    if path.is_dir():
        path = path / TOP_EXAMPLES_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({str(f): examples[f] for f in sorted(examples)}, indent=1) + "\n")
    tmp.replace(path)
    return path


def load_top_examples(file: str | Path) -> dict[int, list[dict]]:
    path = Path(file)
    if path.is_dir():
        path = path / TOP_EXAMPLES_NAME
    try:
        return {int(f): records for f, records in json.loads(path.read_text()).items()}
    except (OSError, json.JSONDecodeError, ValueError, AttributeError) as exc:
        raise SAEError(f"'{path}' is not a valid top-examples file: {exc}") from None
