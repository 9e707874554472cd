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


# ----------------------------------------------------------------------------------------------------------------
# Computing factors (`sae factors`): NMF of feature activations.


def nmf_factors(activations, n_factors: int, seed: int = 0, max_iter: int = 400) -> torch.Tensor:
    """Factor weights [n_factors, n_features] from activations [n_samples, n_features] (dense tensor or scipy
    sparse, non-negative): X ~ W H by scikit-learn's NMF; rows of H, ordered by how much they are used, scaled to
    max 1."""
    from sklearn.decomposition import NMF

    if not isinstance(n_factors, int) or n_factors < 1:
        raise SAEError(f"n (number of factors) is {n_factors!r}; it must be an integer >= 1")
    matrix = activations.numpy() if isinstance(activations, torch.Tensor) else activations
    if n_factors > min(matrix.shape):
        raise SAEError(f"n (number of factors) is {n_factors}; it must be at most {min(matrix.shape)} "
                       f"(samples: {matrix.shape[0]}, features: {matrix.shape[1]})")
    model = NMF(n_components=n_factors, init="nndsvda", max_iter=max_iter, random_state=seed)
    usage = torch.as_tensor(model.fit_transform(matrix)).sum(0)
    weights = torch.as_tensor(model.components_, dtype=torch.float32)
    weights = weights[torch.argsort(usage, descending=True)]
    return weights / weights.max(dim=1, keepdim=True).values.clamp_min(1e-12)


def activation_matrix(sae, store, max_vectors: int = 50_000, seed: int = 0, batch_size: int = 4096):
    """Sparse [samples, n_features] of feature activations divided by sigma_f (so features weigh alike), from an
    evenly spread random subset of the store's vectors where some feature fired."""
    import numpy as np
    from scipy import sparse

    from .metrics import iter_codes

    keep_fraction = min(1.0, max_vectors / max(store.n_vectors, 1))
    generator = torch.Generator().manual_seed(seed)
    rows, cols, data, n_rows = [], [], [], 0
    sigma = sae.feature_mean.cpu().clamp_min(1e-6)
    for values, indices, _, _ in iter_codes(sae, store, batch_size):
        chosen = torch.rand(values.shape[0], generator=generator) < keep_fraction
        values, indices = values[chosen], indices[chosen]
        values = values / sigma[indices]
        fired = values > 0
        row_ids = torch.arange(n_rows, n_rows + values.shape[0])[:, None].expand_as(values)
        rows.append(row_ids[fired].numpy())
        cols.append(indices[fired].numpy())
        data.append(values[fired].numpy())
        n_rows += values.shape[0]
    matrix = sparse.csr_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))),
                               shape=(n_rows, sae.n_features), dtype=np.float32)
    return matrix[matrix.getnnz(axis=1) > 0]


def factor_labels(weights: torch.Tensor, labels: dict, n_top: int = 3) -> list[str]:
    """Each factor's label: the labels (or "f<index>") of its strongest features, joined by " + "."""
    names = []
    for row in weights:
        top = [int(f) for f in torch.argsort(row, descending=True)[:n_top] if float(row[f]) > 0.2]
        parts = [labels[f].label if f in labels else f"f{f}" for f in top]
        names.append(" + ".join(dict.fromkeys(parts)) or "empty")
    return names


def compute_factors(sae, store, n_factors: int, labels: dict | None = None, max_vectors: int = 50_000,
                    seed: int = 0) -> Factors:
    """NMF factors of an SAE's feature activations over a store, labelled from its features' labels."""
    weights = nmf_factors(activation_matrix(sae, store, max_vectors, seed), n_factors, seed)
    return Factors(weights, factor_labels(weights, labels or {}))
