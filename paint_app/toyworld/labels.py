"""Ground-truth labels for the SAE features (and factors) of a toy-model block.

Rendered scenes are encoded by the VAE, noised to each timestep the default sampler visits, and passed through
the UNet with their full caption; the block's site value is encoded by the SAE. Each feature's activation map is
compared with every concept's ground-truth map (the fraction of each grid cell the concept covers) by Pearson
correlation over all cells, scenes and timesteps; its label is the best-matching concept, its score that
correlation (how well the feature *reads* the concept). Its ``write`` is how well painting it writes that
concept: the cosine between its painted direction sigma_f d_f and the concept's mean difference at the block
(where the concept is minus everywhere else); PaintBench and the palette's search pick features by it. Written
to the SAE's ``labels.json`` with ``source: "ground-truth"`` (labels a user wrote are kept); factors get the
label of the concept their summed activation matches best.

``python -m paint_app.toyworld.labels paint_app/assets/toy/saes/<block> [--model toy] [--scenes 300]``
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sae.factors import Factors, load_factors, save_factors
from sae.hooks import block_input, block_output, forward_hooks, site_value
from sae.labels import Label, load_labels, save_labels
from sae.model import SAE
from sae.pipelines import get_block

from .world import BACKGROUND_NAMES, COLOUR_NAMES, SHAPES, SIZE, TEXTURES, caption, render, scene_for_seed

LABEL_SEED_BASE = 30_000_000
CONCEPTS: tuple[tuple[str, str], ...] = (
    tuple(("colour", c) for c in COLOUR_NAMES) + tuple(("shape", s) for s in SHAPES)
    + tuple(("texture", t) for t in TEXTURES) + tuple(("background", b) for b in BACKGROUND_NAMES)
)
CONCEPT_KIND = {name: kind for kind, name in CONCEPTS}


def concept_maps(rendered, grid: tuple[int, int]) -> np.ndarray:
    """[n_concepts, gh, gw]: the fraction of each grid cell covered by each concept."""
    gh, gw = grid
    planes = []
    for kind, name in CONCEPTS:
        values = getattr(rendered, kind)
        index = {"colour": COLOUR_NAMES, "shape": SHAPES, "texture": TEXTURES, "background": BACKGROUND_NAMES}[kind]
        planes.append(values == 1 + index.index(name))
    stack = np.stack(planes).astype(np.float32)
    return stack.reshape(len(CONCEPTS), gh, SIZE // gh, gw, SIZE // gw).mean((2, 4))


@dataclass
class Correlator:
    """Running sums for the Pearson correlation of every activation column with every concept column."""

    n_columns: int
    n_concepts: int

    def __post_init__(self) -> None:
        self.count = 0
        self.sum_z = torch.zeros(self.n_columns, dtype=torch.float64)
        self.sum_zz = torch.zeros(self.n_columns, dtype=torch.float64)
        self.sum_c = torch.zeros(self.n_concepts, dtype=torch.float64)
        self.sum_cc = torch.zeros(self.n_concepts, dtype=torch.float64)
        self.sum_zc = torch.zeros(self.n_columns, self.n_concepts, dtype=torch.float64)

    def update(self, z: torch.Tensor, c: torch.Tensor) -> None:
        z, c = z.double(), c.double()
        self.count += z.shape[0]
        self.sum_z += z.sum(0)
        self.sum_zz += (z * z).sum(0)
        self.sum_c += c.sum(0)
        self.sum_cc += (c * c).sum(0)
        self.sum_zc += z.T @ c

    def correlation(self) -> torch.Tensor:
        n = self.count
        cov = self.sum_zc / n - torch.outer(self.sum_z / n, self.sum_c / n)
        var_z = (self.sum_zz / n - (self.sum_z / n) ** 2).clamp_min(1e-12)
        var_c = (self.sum_cc / n - (self.sum_c / n) ** 2).clamp_min(1e-12)
        return (cov / torch.sqrt(torch.outer(var_z, var_c))).float()


@torch.no_grad()
def ground_truth_correlations(pipe, sae: SAE, block: str, n_scenes: int = 300, steps: int = 8,
                              batch_size: int = 32, factor_weights: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Correlations [n_features, n_concepts] (and [n_factors, n_concepts] with factor weights), and each
    concept's mean site value where it is minus where it is not [n_concepts, d_in]."""
    module = get_block(pipe.unet, block)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.clone()
    scale = pipe.vae.config.scaling_factor
    features = Correlator(sae.n_features, len(CONCEPTS))
    means = ConceptMeans(sae.d_in, len(CONCEPTS))
    factors = Correlator(factor_weights.shape[0], len(CONCEPTS)) if factor_weights is not None else None
    captured: list[torch.Tensor] = []

    def hook(mod, args, kwargs, output):
        captured.append(site_value(sae.config.site, block_input(args, kwargs), block_output(output)))

    generator = torch.Generator().manual_seed(0)
    with forward_hooks({module: hook}):
        for start in range(0, n_scenes, batch_size):
            scenes = [scene_for_seed(LABEL_SEED_BASE + i) for i in range(start, min(n_scenes, start + batch_size))]
            rendered = [render(s) for s in scenes]
            images = torch.from_numpy(np.stack([r.image for r in rendered]).astype(np.float32) / 127.5 - 1)
            latents = pipe.vae.encode(images.permute(0, 3, 1, 2).to(pipe.vae.dtype)).latent_dist.mean * scale
            embeds = pipe.encode_prompt([caption(s, form="full") for s in scenes], pipe.unet.device, 1, False)[0]
            for t in timesteps:
                noise = torch.randn(latents.shape, generator=generator).to(latents.dtype)
                noisy = scheduler.add_noise(latents, noise, t.repeat(len(scenes)))
                captured.clear()
                pipe.unet(noisy, t, encoder_hidden_states=embeds)
                value = captured[0].permute(0, 2, 3, 1).float()  # [b, H, W, C]
                grid = tuple(value.shape[1:3])
                maps = torch.from_numpy(np.stack([concept_maps(r, grid) for r in rendered]))  # [b, J, H, W]
                c = maps.permute(0, 2, 3, 1).reshape(-1, len(CONCEPTS))
                z = sae.encode(value.to(sae.W_dec.dtype)).reshape(-1, sae.n_features).float()
                features.update(z, c)
                means.update(value.reshape(-1, sae.d_in), c)
                if factors is not None:
                    factors.update(z @ factor_weights.T, c)
    return features.correlation(), (factors.correlation() if factors is not None else None), means.difference()


class ConceptMeans:
    """Running means of the site value where each concept is and where it is not, each cell weighted by how
    much of it the concept covers (and does not cover)."""

    def __init__(self, d_in: int, n_concepts: int) -> None:
        self.sums = torch.zeros(n_concepts, d_in, dtype=torch.float64)
        self.weights = torch.zeros(n_concepts, 1, dtype=torch.float64)
        self.total = torch.zeros(d_in, dtype=torch.float64)
        self.count = 0

    def update(self, x: torch.Tensor, c: torch.Tensor) -> None:
        x, c = x.double(), c.double()
        self.sums += c.T @ x
        self.weights += c.sum(0)[:, None]
        self.total += x.sum(0)
        self.count += x.shape[0]

    def difference(self) -> torch.Tensor:
        """[J, d_in]: the mean where the concept is minus the mean everywhere else.

        Everywhere else, not only where the other concepts of its kind are: a painted region is often
        background, so the direction must carry "an object here" as well as "this colour"."""
        inside = self.sums / self.weights.clamp_min(1e-9)
        outside = (self.total - self.sums) / (self.count - self.weights).clamp_min(1e-9)
        return (inside - outside).float()


def concept_factors(sae: SAE, differences: torch.Tensor, max_features: int = 16) -> torch.Tensor:
    """One non-negative mix of features per concept whose painted direction, sum_f w_f sigma_f d_f, best matches
    the concept's mean difference (NNLS on the strongest-aligned features); rows scaled so at strength 1 the mix
    adds that difference. Returns [n_concepts, n_features]."""
    from scipy.optimize import nnls

    with torch.no_grad():
        atoms = (sae.W_dec * sae.feature_mean[:, None]).double()  # [n, d]
        alive = sae.feature_frequency > 0
        rows = torch.zeros(differences.shape[0], sae.n_features, dtype=torch.float64)
        for j, target in enumerate(differences.double()):
            cosine = (atoms @ target) / (atoms.norm(dim=1) * target.norm()).clamp_min(1e-12)
            cosine[~alive] = -1
            chosen = torch.argsort(cosine, descending=True)[:max_features]
            weights, _ = nnls(atoms[chosen].T.numpy(), target.numpy())
            rows[j, chosen] = torch.from_numpy(weights)
    return rows.float()


def write_scores(sae: SAE, differences: torch.Tensor) -> torch.Tensor:
    """[n_features, n_concepts]: cosine of each feature's painted direction sigma_f d_f with each concept's mean
    difference, i.e. how much painting the feature moves the block's activations towards the concept."""
    with torch.no_grad():
        atoms = (sae.W_dec * sae.feature_mean[:, None]).float()
        differences = differences.float()
        return (atoms @ differences.T) / (atoms.norm(dim=1)[:, None] * differences.norm(dim=1)[None]).clamp_min(1e-12)


FEATURE_CHOICES = ("write", "read", "replace", "paste")
TRIAL_MODES = ("replace", "paste")  # modes whose labels carry a measured trial score of that name


def best_labelled(labels: dict[int, Label], concept: str, by: str = "write") -> int | None:
    """The feature labelled ``concept`` that best writes it (highest write score, falling back to the label
    score where the labels have no write scores), best reads it (``by="read"``: highest label score) or best
    paints it in a trial mode (``by="replace"`` or ``"paste"``: highest score of that name, then label score,
    among the features whose score was measured; the best reader where none was); the lowest index on a tie,
    None when no feature has that label."""
    if by not in FEATURE_CHOICES:
        raise ValueError(f"feature choice is {by!r}; allowed: {', '.join(FEATURE_CHOICES)}")
    labelled = [f for f, label in labels.items() if label.label == concept]
    if by in TRIAL_MODES:
        measured = [f for f in labelled if getattr(labels[f], by) is not None]
        return max(measured or labelled, key=lambda f: (getattr(labels[f], by) or 0.0, labels[f].score, -f),
                   default=None)
    writes = by == "write" and all(labels[f].write is not None for f in labelled)
    return max(labelled, key=lambda f: (labels[f].write if writes else labels[f].score, -f), default=None)


def set_trial_scores(folder: Path, scores: dict[int, float], mode: str = "replace") -> int:
    """Write measured trial scores of ``mode`` (replace or paste) into the SAE's ground-truth labels (clearing
    earlier ones); returns how many labels got one."""
    if mode not in TRIAL_MODES:
        raise ValueError(f"mode is {mode!r}; allowed: {', '.join(TRIAL_MODES)}")
    labels = load_labels(folder)
    for feature, label in labels.items():
        if label.source == "ground-truth":
            setattr(label, mode, round(scores[feature], 4) if feature in scores else None)
    save_labels(folder, labels)
    return sum(getattr(label, mode) is not None for label in labels.values())


def best_labels(correlation: torch.Tensor, active: torch.Tensor,
                writes: torch.Tensor | None = None) -> dict[int, Label]:
    """Each active row's best concept, with its correlation as the score (rows with no positive match skipped)
    and, given ``writes`` [rows, concepts], the row's write score for that concept."""
    score, concept = correlation.max(1)
    labels = {}
    for row in range(correlation.shape[0]):
        if bool(active[row]) and float(score[row]) > 0:
            j = int(concept[row])
            write = None if writes is None else round(float(writes[row, j]), 4)
            labels[row] = Label(CONCEPTS[j][1], round(float(score[row]), 4), "ground-truth", write)
    return labels


def label_sae(pipe, folder: Path, n_scenes: int = 300, steps: int = 8) -> dict:
    """Write ground-truth labels for the SAE in ``folder`` and label its factors; returns a summary.

    Factors made by ``sae factors`` get the label of the concept their summed activation matches best, with
    `` (nmf)`` appended; one factor per concept fitted from the ground truth (``concept_factors``) is appended,
    labelled with the concept's name. A previous run's fitted factors are replaced.
    """
    sae = SAE.from_pretrained(folder)
    sae.eval()
    block = sae.config.block
    factors = load_factors(folder)
    if factors is not None:  # drop fitted rows from an earlier labelling
        kept = [i for i, label in enumerate(factors.labels) if label not in CONCEPT_KIND]
        factors = Factors(factors.weights[kept], [factors.labels[i] for i in kept]) if kept else None
    feature_corr, factor_corr, differences = ground_truth_correlations(
        pipe, sae, block, n_scenes, steps, factor_weights=factors.weights if factors is not None else None)
    writes = write_scores(sae, differences)
    labels = best_labels(feature_corr, sae.feature_frequency > 0, writes)
    kept_labels = {f: label for f, label in load_labels(folder).items() if label.source == "user"}
    save_labels(folder, {**labels, **kept_labels})
    weights, names = [], []
    if factors is not None and factor_corr is not None:
        found = best_labels(factor_corr, torch.ones(factors.n_factors, dtype=torch.bool))
        weights.append(factors.weights)
        names += [f"{found[i].label} (nmf)" if i in found else f"factor {i}" for i in range(factors.n_factors)]
    fitted = concept_factors(sae, differences)
    scale = fitted.max(1, keepdim=True).values.clamp_min(1e-9)
    weights.append(fitted / scale)
    names += [name for _, name in CONCEPTS]
    save_factors(folder, Factors(torch.cat(weights), names))
    best = {}
    for j, (kind, name) in enumerate(CONCEPTS):
        feature = int(feature_corr[:, j].argmax())
        writer = best_labelled(labels, name)
        best[name] = {"kind": kind, "feature": feature, "score": round(float(feature_corr[feature, j]), 4),
                      "writing_feature": writer, "write": None if writer is None else labels[writer].write,
                      "fitted_factor_strength_for_mean_difference": round(float(scale[j]), 3)}
    summary = {"block": block, "scenes": n_scenes, "steps": steps, "labelled": len(labels), "best": best}
    (folder / "ground_truth.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paint_app.toyworld.labels", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="SAE folders of the toy model")
    parser.add_argument("--model", default="toy")
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    from sae.pipelines import load_diffusers_pipeline

    torch.set_num_threads(1)
    pipe = load_diffusers_pipeline(args.model, device="cpu")
    for folder in args.folders:
        summary = label_sae(pipe, folder, args.scenes, args.steps)
        print(json.dumps({"block": summary["block"], "labelled": summary["labelled"],
                          "best": {k: v["score"] for k, v in summary["best"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
