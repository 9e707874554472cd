"""Parts of one image: NMF of its per-cell SAE codes into a few spatial maps, each with its feature weights.

As Paint With Ember factorises a generated image: the codes ``[H, W, F]`` of one block over the image are a
cells x features matrix X; scikit-learn's NMF writes X ~ M P with M ``[cells, n]`` (where each part is) and P
``[n, F]`` (what it is made of). Features that fire by place whatever the image shows (``position_features``)
are left out of the fit, since they would make parts of places rather than things, and are put back after it:
each one's weights on the fitted maps by non-negative least squares.

Pure numpy, scipy and scikit-learn; nothing here knows a pipeline.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .errors import SAEError

MIN_PARTS, MAX_PARTS = 2, 8
POSITION_MIN_SHARE = 0.6  # a position feature is active (with a spatial pattern) in at least this share of images
POSITION_MIN_CORRELATION = 0.5  # ... and its maps correlate this much, on average, between any two of them


@dataclass
class Parts:
    """An image's parts: ``maps`` [n, H, W] (each scaled to a maximum of 1) and ``weights`` [n, F], largest part
    (by its share of the codes' total) first; ``excluded``: the features left out of the fit and put back."""

    maps: np.ndarray
    weights: np.ndarray
    excluded: np.ndarray

    def __len__(self) -> int:
        return self.maps.shape[0]

    def top_features(self, part: int, n: int = 8, min_share: float = 0.1) -> dict[int, float]:
        """Part ``part``'s strongest features with their weights (at least ``min_share`` of its largest),
        strongest first."""
        row = self.weights[part]
        order = np.argsort(-row, kind="stable")[:n]
        peak = float(row[order[0]]) if len(order) else 0.0
        return {int(f): float(row[f]) for f in order if peak > 0 and row[f] >= min_share * peak}


def _check_codes(codes: np.ndarray, name: str = "codes") -> np.ndarray:
    array = np.asarray(codes, dtype=np.float64)
    if array.ndim != 3 or 0 in array.shape:
        raise SAEError(f"{name} has shape {list(array.shape)}; allowed: [rows, cols, features], none of them 0")
    if not np.isfinite(array).all():
        raise SAEError(f"{name} holds NaN or infinite values; allowed: finite activations")
    if (array < 0).any():
        raise SAEError(f"{name} holds negative values; allowed: non-negative SAE activations")
    return array


def position_features(codes: list[np.ndarray], min_share: float = POSITION_MIN_SHARE,
                      min_correlation: float = POSITION_MIN_CORRELATION) -> np.ndarray:
    """Features that fire by place regardless of content, from the codes ``[H, W, F]`` of several different
    images (different prompts and seeds; at least 3).

    Per feature and image, its map's Pearson correlation with its map in every other image: a feature that
    follows what is drawn moves with it (maps of different images correlate little, or negatively where an
    object sits in different places); one that encodes a border, a corner or a side stays put. A feature is
    position-only when it varies over the image (not constant) in at least ``min_share`` of the images and the
    mean correlation over all pairs of those images is at least ``min_correlation``. A feature constant over
    an image has no pattern to compare and counts as not varying there.
    """
    if len(codes) < 3:
        raise SAEError(f"codes has {len(codes)} images; allowed: at least 3 different images")
    arrays = [_check_codes(c, f"codes[{i}]") for i, c in enumerate(codes)]
    if any(a.shape != arrays[0].shape for a in arrays):
        raise SAEError(f"codes have shapes {sorted({tuple(a.shape) for a in arrays})}; allowed: one shape, "
                       "the same block's grid and features for every image")
    rows, cols, n_features = arrays[0].shape
    maps = np.stack([a.reshape(rows * cols, n_features) for a in arrays])  # [images, cells, F]
    centred = maps - maps.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)  # [images, F]
    varying = norms > 1e-9 * np.maximum(np.abs(maps).max(axis=1), 1e-30)
    unit = np.where(varying[:, None, :], centred / np.where(varying, norms, 1.0)[:, None, :], 0.0)
    count = varying.sum(axis=0)
    total = unit.sum(axis=0)  # [cells, F]
    pair_sum = ((total**2).sum(axis=0) - count) / 2  # the sum of correlations over pairs of varying images
    pairs = count * (count - 1) / 2
    mean_correlation = np.where(pairs > 0, pair_sum / np.maximum(pairs, 1), 0.0)
    chosen = (count >= max(2, min_share * len(arrays))) & (mean_correlation >= min_correlation)
    return np.flatnonzero(chosen)


def check_parts(n_parts: int, name: str = "parts") -> int:
    if not isinstance(n_parts, (int, np.integer)) or isinstance(n_parts, bool) or \
            not MIN_PARTS <= n_parts <= MAX_PARTS:
        raise SAEError(f"{name} is {n_parts!r}; allowed: {MIN_PARTS} to {MAX_PARTS}")
    return int(n_parts)


def decompose(codes: np.ndarray, n_parts: int, exclude: np.ndarray | None = None, seed: int = 0,
              max_iter: int = 1000) -> Parts:
    """The parts of one image from its codes ``[H, W, F]``: NMF (fixed ``seed``: the same codes give the same
    parts) of the cells x features matrix without the ``exclude`` features, which are then put back on the
    fitted maps by non-negative least squares. Maps are scaled to a maximum of 1 (weights scaled inversely, so
    maps x weights is unchanged), largest part first."""
    from scipy.optimize import nnls
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    n_parts = check_parts(n_parts)
    array = _check_codes(codes)
    rows, cols, n_features = array.shape
    if not array.any():
        raise SAEError("codes are all zero; no feature is active in this image, so it has no parts")
    excluded = np.unique(np.asarray([] if exclude is None else exclude, dtype=np.int64))
    if excluded.size and (excluded.min() < 0 or excluded.max() >= n_features):
        raise SAEError(f"exclude holds {excluded.tolist()}; allowed: feature indices 0 to {n_features - 1}")
    matrix = array.reshape(rows * cols, n_features)
    kept = np.setdiff1d(np.arange(n_features), excluded)
    fitted = matrix[:, kept]
    active = fitted.any(axis=0)
    if n_parts > min(rows * cols, int(active.sum())):
        raise SAEError(f"parts is {n_parts}; this image has {rows * cols} cells and {int(active.sum())} active "
                       f"features outside the position-only ones, so allowed: {MIN_PARTS} to "
                       f"{max(MIN_PARTS, min(rows * cols, int(active.sum())))}")
    model = NMF(n_components=n_parts, init="nndsvda", random_state=seed, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the fit is used as it stands after max_iter
        where = model.fit_transform(fitted[:, active])  # [cells, n]
    weights = np.zeros((n_parts, n_features))
    weights[:, kept[active]] = model.components_
    peaks = where.max(axis=0)
    live = peaks > 0
    where[:, live] /= peaks[live]
    weights[live] *= peaks[live, None]
    for feature in excluded:  # put back on the fixed maps
        weights[:, feature] = nnls(where, matrix[:, feature])[0]
    mass = where.sum(axis=0) * weights.sum(axis=1)
    order = np.argsort(-mass, kind="stable")
    maps = where[:, order].T.reshape(n_parts, rows, cols)
    return Parts(maps.astype(np.float32), weights[order].astype(np.float32), excluded)


__all__ = ["MAX_PARTS", "MIN_PARTS", "Parts", "check_parts", "decompose", "position_features"]
