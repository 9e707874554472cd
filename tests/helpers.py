"""Helpers the tests share: random SAEs for the tiny pipelines, sessions, masks."""

from __future__ import annotations

from pathlib import Path

import torch

from sae.factors import Factors, save_factors
from sae.labels import Label, save_labels
from sae.model import SAE, SAEConfig


def make_sae(d_in: int, n_features: int = 64, k: int = 4, block: str | None = None, seed: int = 0,
             site: str = "delta", model: str | None = None) -> SAE:
    """A random SAE with plausible statistics (sigma_f in [0.5, 1.5], frequency in (0, 0.1])."""
    generator = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, n_features=n_features, k=k, block=block, site=site, model=model))
    sae.reset_parameters(generator)
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(n_features, generator=generator))
        sae.b_pre.copy_(0.1 * torch.randn(d_in, generator=generator))
        sae.set_feature_statistics(0.5 + torch.rand(n_features, generator=generator),
                                   0.1 * torch.rand(n_features, generator=generator) + 1e-3)
    return sae.eval()


def save_sae(folder: Path, sae: SAE, labels: dict[int, str] | None = None, n_factors: int = 0) -> Path:
    sae.save_pretrained(folder)
    if labels:
        save_labels(folder, {f: Label(text, 1.0, "user") for f, text in labels.items()})
    if n_factors:
        generator = torch.Generator().manual_seed(1)
        weights = torch.rand(n_factors, sae.n_features, generator=generator)
        weights = torch.where(weights > 0.8, weights, torch.zeros_like(weights))
        weights[:, 0] = 0.5
        weights = weights / weights.max(dim=1, keepdim=True).values
        save_factors(folder, Factors(weights, [f"factor {i}" for i in range(n_factors)]))
    return folder


def tiny_sae_folder(tmp_path: Path, block: str = "down_blocks.0.attentions.0", channels: int = 32,
                    n_features: int = 64, **kwargs) -> Path:
    folder = tmp_path / block
    return save_sae(folder, make_sae(channels, n_features, block=block, **kwargs),
                    labels={0: "red thing", 1: "blue thing", 2: "striped"}, n_factors=3)


def checking(app):
    """``app`` with every handler that declares its outputs (``@outputs``) checked at each call: a key it returns
    (or yields, for a streaming handler) that its declaration lacks raises ``UndeclaredOutput`` (so every test here
    checks the declarations too). A streaming handler's results come back as a list."""
    import inspect

    from paint_app.ui.outputs import check_declared, declared_handlers

    for name, names in declared_handlers(type(app)).items():
        method = getattr(app, name)

        def checked(*args, _method=method, _names=names, _name=name, **kwargs):
            if inspect.isgeneratorfunction(_method):
                return [check_declared(result, _names, _name) for result in _method(*args, **kwargs)]
            return check_declared(_method(*args, **kwargs), _names, _name)

        checked.__name__ = name
        setattr(app, name, checked)
    return app
