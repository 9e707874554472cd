"""Factors: weighted groups of SAE features (as Paint With Ember paints with).

``factors.safetensors`` beside an SAE holds ``weights`` [n_factors, n_features] (non-negative, each row scaled
so its largest weight is 1) and, in its metadata, ``labels``: a JSON list with one label per factor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import SAEError

FACTORS_NAME = "factors.safetensors"


@dataclass
class Factors:
    weights: torch.Tensor
    labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.weights.ndim != 2:
            raise SAEError(f"factor weights must be 2-D [n_factors, n_features], got shape {list(self.weights.shape)}")
        if not self.labels:
            self.labels = [f"factor {i}" for i in range(self.n_factors)]
        if len(self.labels) != self.n_factors:
            raise SAEError(f"factors have {self.n_factors} rows but {len(self.labels)} labels")

    @property
    def n_factors(self) -> int:
        return self.weights.shape[0]

    def features_of(self, factor: int, min_weight: float = 1e-3) -> dict[int, float]:
        """The features of one factor with their weights, strongest first."""
        if not isinstance(factor, int) or isinstance(factor, bool) or not 0 <= factor < self.n_factors:
            raise SAEError(f"factor is {factor!r}; allowed: 0..{self.n_factors - 1}")
        row = self.weights[factor]
        order = torch.argsort(row, descending=True)
        return {int(f): float(row[f]) for f in order if float(row[f]) > min_weight}


def save_factors(path: str | Path, factors: Factors) -> None:
    file = Path(path)
    if file.is_dir():
        file = file / FACTORS_NAME
    tmp = file.with_suffix(".tmp")
    save_file({"weights": factors.weights.detach().float().contiguous()}, str(tmp),
              metadata={"labels": json.dumps(factors.labels)})
    tmp.replace(file)


def load_factors(path: str | Path) -> Factors | None:
    """Factors from a file or from an SAE folder; None when the folder has no factors file."""
    file = Path(path)
    if file.is_dir():
        file = file / FACTORS_NAME
        if not file.exists():
            return None
    try:
        with safe_open(str(file), framework="pt") as handle:
            weights = handle.get_tensor("weights")
            labels = json.loads((handle.metadata() or {}).get("labels", "[]"))
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as exc:
        raise SAEError(f"'{file}' is not a valid factors file: {exc}") from None
    return Factors(weights.float(), list(labels))
