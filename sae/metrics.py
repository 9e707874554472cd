"""How good an SAE is on a set of activations: explained variance, L0, dead fraction, feature statistics.

Also the splice test of Surkov et al.: put the SAE's reconstruction into the block during generation and
measure how much the images change against the plain run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .model import SAE


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 - |x - x_hat|^2 / |x - mean(x)|^2 over a batch [N, d]."""
    error = (x - x_hat).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    return float(1 - error / total)


@dataclass
class FeatureStats:
    """Streaming statistics of an SAE over many batches (float64 sums, so the order of batches hardly matters)."""

    n_features: int
    n_vectors: int = 0
    count: torch.Tensor = field(init=False)
    total: torch.Tensor = field(init=False)
    active: int = 0
    squared_error: float = 0.0
    sum_x: torch.Tensor | None = None
    sum_x2: float = 0.0

    def __post_init__(self) -> None:
        self.count = torch.zeros(self.n_features, dtype=torch.float64)
        self.total = torch.zeros(self.n_features, dtype=torch.float64)

    def update(self, values: torch.Tensor, indices: torch.Tensor, x: torch.Tensor | None = None,
               x_hat: torch.Tensor | None = None) -> None:
        fired = values > 0
        flat_index = indices[fired].cpu()
        self.count.index_add_(0, flat_index, torch.ones(flat_index.shape[0], dtype=torch.float64))
        self.total.index_add_(0, flat_index, values[fired].double().cpu())
        self.active += int(fired.sum())
        self.n_vectors += values.shape[0]
        if x is not None and x_hat is not None:
            x64 = x.double()
            self.squared_error += float((x64 - x_hat.double()).pow(2).sum())
            self.sum_x = x64.sum(0).cpu() if self.sum_x is None else self.sum_x + x64.sum(0).cpu()
            self.sum_x2 += float(x64.pow(2).sum())

    @property
    def frequency(self) -> torch.Tensor:
        return (self.count / max(self.n_vectors, 1)).float()

    @property
    def mean(self) -> torch.Tensor:
        """sigma_f: the mean non-zero activation; features that never fired get the mean over live features."""
        live = self.count > 0
        mean = torch.where(live, self.total / self.count.clamp_min(1), torch.zeros_like(self.total))
        fallback = float(mean[live].mean()) if bool(live.any()) else 1.0
        return torch.where(live, mean, torch.full_like(mean, fallback)).float()

    @property
    def dead_fraction(self) -> float:
        return float((self.count == 0).double().mean())

    @property
    def l0(self) -> float:
        return self.active / max(self.n_vectors, 1)

    @property
    def fvu(self) -> float:
        """Fraction of variance unexplained over everything seen (needs x and x_hat in ``update``)."""
        if self.sum_x is None:
            return math.nan
        total = self.sum_x2 - float(self.sum_x.pow(2).sum()) / max(self.n_vectors, 1)
        return self.squared_error / max(total, 1e-12)


@torch.no_grad()
def feature_statistics(sae: SAE, batches: Iterable[torch.Tensor], with_error: bool = True) -> FeatureStats:
    """Run the SAE over float32 batches [N, d_in] (already on the SAE's device)."""
    stats = FeatureStats(sae.n_features)
    for x in batches:
        values, indices = sae.encode_topk(x)
        x_hat = sae.decode_sparse(values, indices) if with_error else None
        stats.update(values, indices, x if with_error else None, x_hat)
    return stats


def frequency_histogram(frequency: torch.Tensor, n_bins: int = 12) -> dict:
    """Counts of features per log10(firing frequency) bin, plus the never-firing ones."""
    live = frequency[frequency > 0].double().log10()
    low = math.floor(float(live.min())) if live.numel() else -6
    edges = torch.linspace(low, 0, n_bins + 1, dtype=torch.float64)
    counts = torch.histogram(live, bins=edges).hist if live.numel() else torch.zeros(n_bins)
    return {"log10_edges": [round(float(e), 3) for e in edges], "counts": [int(c) for c in counts],
            "never_fired": int((frequency == 0).sum())}


def plot_frequency(frequency: torch.Tensor, file: str | Path, title: str = "") -> None:
    """A PNG histogram of log10 firing frequencies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histogram = frequency_histogram(frequency, n_bins=30)
    edges = histogram["log10_edges"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.stairs(histogram["counts"], edges, fill=True)
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("features")
    ax.set_title(f"{title} ({histogram['never_fired']} never fired)".strip())
    fig.tight_layout()
    fig.savefig(file, dpi=100)
    plt.close(fig)


@torch.no_grad()
def splice_pixel_difference(pipe, sae: SAE, block: str, prompts: list[str], pipeline_kwargs: dict,
                            seed: int = 0, batch_size: int = 4) -> dict[str, float]:
    """Mean absolute pixel difference (0..255) between plain images and images whose ``block`` output is replaced
    by the SAE reconstruction; and, as a yardstick, by mean ablation (the site replaced by b_pre)."""
    import numpy as np

    from .hooks import block_input, block_output, forward_hooks, replace_block_output
    from .pipelines import get_block

    module = get_block(pipe.unet, block)
    sae = sae.to(pipe.unet.device)

    def make_hook(ablate: bool):
        def hook(_module, args, kwargs, output):
            h_in, h_out = block_input(args, kwargs), block_output(output)
            base = h_in if sae.config.site == "delta" else torch.zeros_like(h_out)
            x = (h_out - base).permute(0, 2, 3, 1).float()
            x_hat = sae.b_pre.expand_as(x) if ablate else sae(x)
            return replace_block_output(output, (base + x_hat.permute(0, 3, 1, 2)).to(h_out.dtype))
        return hook

    def render(batch: list[str], first: int, hook=None) -> np.ndarray:
        generators = [torch.Generator().manual_seed(seed + first + i) for i in range(len(batch))]
        with forward_hooks({module: hook} if hook else {}):
            images = pipe(prompt=batch, generator=generators, output_type="np", **pipeline_kwargs).images
        return np.asarray(images, dtype=np.float64) * 255

    totals = {"pixel_diff_reconstruction": 0.0, "pixel_diff_mean_ablation": 0.0}
    for first in range(0, len(prompts), batch_size):
        batch = prompts[first:first + batch_size]
        plain = render(batch, first)
        totals["pixel_diff_reconstruction"] += float(np.abs(render(batch, first, make_hook(False)) - plain).mean()) * len(batch)
        totals["pixel_diff_mean_ablation"] += float(np.abs(render(batch, first, make_hook(True)) - plain).mean()) * len(batch)
    return {key: value / len(prompts) for key, value in totals.items()}


@torch.no_grad()
def iter_codes(sae: SAE, store, batch_size: int = 4096, max_vectors: int | None = None):
    """(values [N, k], indices [N, k], index [N, 4], x [N, d_in]) over a store's vectors in shard order."""
    device = sae.W_dec.device
    for x, index in store.iter_batches(batch_size, max_vectors=max_vectors):
        x = x.to(device)
        values, indices = sae.encode_topk(x)
        yield values.cpu(), indices.cpu(), index, x


def evaluate(sae: SAE, store, batch_size: int = 4096, max_vectors: int | None = None) -> dict:
    """FVU, explained variance, L0, dead fraction and the firing-frequency histogram over a store."""
    stats = FeatureStats(sae.n_features)
    with torch.no_grad():
        for x, _ in store.iter_batches(batch_size, max_vectors=max_vectors):
            x = x.to(sae.W_dec.device)
            values, indices = sae.encode_topk(x)
            stats.update(values, indices, x, sae.decode_sparse(values, indices))
    return {"vectors": stats.n_vectors, "fvu": stats.fvu, "explained_variance": 1 - stats.fvu, "l0": stats.l0,
            "dead_fraction": stats.dead_fraction, "frequency_histogram": frequency_histogram(stats.frequency),
            "frequency": stats.frequency}
