"""Automatic judges of an image region in the toy world: colour, shape and texture.

- colour: pixel statistics. Every pixel goes to its nearest reference colour (each object colour, its
  stripe/dot shade, and each background); a region's colour is its most frequent object colour, if that colour
  covers at least ``COLOUR_MIN_FRACTION`` of the region.
- shape: a small MLP on the silhouette (largest connected foreground component in the region, cropped to its
  bounding box, padded square, resized to 20x20), trained on ground-truth renders (blurred at random, since
  generated images are softer than renders).
- texture: a small MLP on where the pattern shade lies in the region's foreground: its share of the pixels and
  of rows / columns that are mostly or half shade (stripes fill whole rows, dots half of some rows and columns).
Weights are safetensors, metadata and held-out accuracies JSON (``paint_app/assets/toy/judges``, package data:
``paint_app.toyworld.JUDGES_DIR``). Train and evaluate with
``python -m paint_app.toyworld.judges [--out paint_app/assets/toy/judges]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from . import JUDGES_DIR
from .world import (
    BACKGROUNDS,
    COLOUR_NAMES,
    COLOURS,
    PATTERN_SHADE,
    SHAPES,
    TEXTURES,
    render,
    scene_for_seed,
)

COLOUR_MIN_FRACTION = 0.3
SHAPE_INPUT = 20
MIN_OBJECT_PIXELS = 24
JUDGE_SEED_BASE = 20_000_000  # judge training renders; evaluation uses JUDGE_SEED_BASE + 1_000_000 and up


# ----------------------------------------------------------------------------------------------------------------
# Colour: nearest reference colour per pixel.


def _references() -> tuple[np.ndarray, np.ndarray]:
    """Reference RGB rows and their class: colour index, or -1 for background."""
    rows, classes = [], []
    for index, name in enumerate(COLOUR_NAMES):
        rgb = np.array(COLOURS[name], np.float32)
        rows += [rgb, rgb * PATTERN_SHADE, rgb * (1 + PATTERN_SHADE) / 2]
        classes += [index] * 3  # kinds (see _REF_KIND): full colour, pattern shade, the blur between them
    for base, _ in BACKGROUNDS.values():
        rows.append(np.array(base, np.float32))
        classes.append(-1)
    sky = np.array(BACKGROUNDS["sky"][0], np.float32)
    rows += [sky - 12, sky + 12]  # the sky's gradient ends
    classes += [-1, -1]
    return np.stack(rows), np.array(classes)


_REF_RGB, _REF_CLASS = _references()
_REF_KIND = np.array([i % 3 if c >= 0 else -1 for i, c in enumerate(_REF_CLASS)])


def classify_pixels(image: np.ndarray) -> np.ndarray:
    """[H, W] int map: the colour index of each pixel (into COLOUR_NAMES), -1 for background."""
    pixels = np.asarray(image, np.float32).reshape(-1, 1, 3)
    distance = ((pixels - _REF_RGB[None]) ** 2).sum(-1)
    return _REF_CLASS[distance.argmin(1)].reshape(image.shape[:2])


def foreground(image: np.ndarray) -> np.ndarray:
    return classify_pixels(image) >= 0


def _as_mask(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    return np.ones(shape, bool) if mask is None else np.asarray(mask) > 0.5


def colour_fractions(image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Fraction of the region's pixels judged each colour (and ``background``)."""
    classes = classify_pixels(image)[_as_mask(mask, image.shape[:2])]
    total = max(1, classes.size)
    fractions = {name: float((classes == i).sum() / total) for i, name in enumerate(COLOUR_NAMES)}
    fractions["background"] = float((classes < 0).sum() / total)
    return fractions


def judge_colour(image: np.ndarray, mask: np.ndarray | None = None) -> tuple[str, float]:
    """(colour, fraction of the region it covers), or ("none", fraction) when no colour covers enough."""
    fractions = colour_fractions(image, mask)
    fractions.pop("background")
    name = max(fractions, key=fractions.get)
    return (name if fractions[name] >= COLOUR_MIN_FRACTION else "none"), fractions[name]


# ----------------------------------------------------------------------------------------------------------------
# Small MLPs (trained with scikit-learn, run in numpy from safetensors).


@dataclass
class MLP:
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    classes: tuple[str, ...]

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, np.float32)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0)
        h = np.exp(h - h.max(1, keepdims=True))
        return h / h.sum(1, keepdims=True)

    def tensors(self, prefix: str) -> dict[str, np.ndarray]:
        out = {}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            out[f"{prefix}.{i}.weight"], out[f"{prefix}.{i}.bias"] = w.astype(np.float32), b.astype(np.float32)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], prefix: str, classes: tuple[str, ...]) -> MLP:
        n = len([k for k in tensors if k.startswith(prefix + ".") and k.endswith(".weight")])
        return cls([tensors[f"{prefix}.{i}.weight"] for i in range(n)], [tensors[f"{prefix}.{i}.bias"] for i in range(n)],
                   classes)


def fit_mlp(x: np.ndarray, y: np.ndarray, classes: tuple[str, ...], hidden: tuple[int, ...], seed: int) -> MLP:
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(hidden_layer_sizes=hidden, max_iter=300, random_state=seed, early_stopping=True,
                          n_iter_no_change=15)
    model.fit(x, y)
    if len(model.classes_) != len(classes):
        raise ValueError(f"training data has classes {model.classes_}, expected {len(classes)}")
    weights, biases = list(model.coefs_), list(model.intercepts_)
    if len(classes) == 2:  # sklearn uses one logistic output; make it two softmax logits
        weights[-1] = np.concatenate([np.zeros_like(weights[-1]), weights[-1]], 1)
        biases[-1] = np.concatenate([np.zeros_like(biases[-1]), biases[-1]])
    return MLP(weights, biases, classes)


# ----------------------------------------------------------------------------------------------------------------
# Shape: silhouettes.


def silhouette(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray | None:
    """The largest foreground component in the region, as a SHAPE_INPUT^2 float vector, or None if too small."""
    region = foreground(image) & _as_mask(mask, image.shape[:2])
    labels, n = ndimage.label(region)
    if n == 0:
        return None
    sizes = ndimage.sum(region, labels, index=range(1, n + 1))
    biggest = int(np.argmax(sizes)) + 1
    if sizes[biggest - 1] < MIN_OBJECT_PIXELS:
        return None
    return silhouette_of(labels == biggest)


def silhouette_of(component: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(component)
    crop = component[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    side = max(crop.shape)
    square = np.zeros((side, side), np.uint8)
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[top:top + crop.shape[0], left:left + crop.shape[1]] = crop * 255
    resized = Image.fromarray(square).resize((SHAPE_INPUT, SHAPE_INPUT), Image.BILINEAR)
    return np.asarray(resized, np.float32).reshape(-1) / 255.0


# ----------------------------------------------------------------------------------------------------------------
# Texture: where the object's shade (stripes, dots) lies, row by row and column by column.

TEXTURE_FEATURES = 9


def dark_pixels(image: np.ndarray) -> np.ndarray:
    """[H, W] bool: pixels nearest to an object colour's pattern shade."""
    pixels = np.asarray(image, np.float32).reshape(-1, 1, 3)
    nearest = ((pixels - _REF_RGB[None]) ** 2).sum(-1).argmin(1)
    return (_REF_KIND[nearest] == 1).reshape(image.shape[:2])


def _profile(dark: np.ndarray, inside: np.ndarray, axis: int) -> list[float]:
    """Of the lines (rows for axis=1) with >= 3 region pixels: fractions mostly dark, half dark, and their count."""
    counts = inside.sum(axis)
    keep = counts >= 3
    if not keep.any():
        return [0.0, 0.0, 0.0]
    fraction = (dark & inside).sum(axis)[keep] / counts[keep]
    return [float((fraction > 0.7).mean()), float(((fraction > 0.2) & (fraction <= 0.7)).mean()),
            min(1.0, keep.sum() / 16)]


def texture_features(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray | None:
    """Features of the pattern on the region's foreground; None when under MIN_OBJECT_PIXELS of it."""
    inside = foreground(image) & _as_mask(mask, image.shape[:2])
    if inside.sum() < MIN_OBJECT_PIXELS:
        return None
    dark = dark_pixels(image)
    eroded = ndimage.binary_erosion(inside)
    core = eroded if eroded.sum() >= MIN_OBJECT_PIXELS else inside  # edges of soft images read as shade
    features = [float((dark & core).sum() / core.sum()), float((dark & inside).sum() / inside.sum()),
                min(1.0, core.sum() / 400)]
    features += _profile(dark, core, 1) + _profile(dark, core, 0)
    return np.array(features, np.float32)


# ----------------------------------------------------------------------------------------------------------------
# The judges together.


@dataclass
class Judges:
    shape_mlp: MLP
    texture_mlp: MLP
    info: dict

    def colour(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[str, float]:
        return judge_colour(image, mask)

    def shape(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[str, float]:
        """(shape, probability) of the largest object silhouette in the region, or ("none", 0)."""
        vector = silhouette(np.asarray(image), mask)
        if vector is None:
            return "none", 0.0
        probs = self.shape_mlp.probabilities(vector[None])[0]
        return SHAPES[int(probs.argmax())], float(probs.max())

    def texture(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[str, float]:
        """(texture, probability) of the foreground in the region, or ("none", 0) when there is too little."""
        features = texture_features(np.asarray(image), mask)
        if features is None:
            return "none", 0.0
        probs = self.texture_mlp.probabilities(features[None])[0]
        return TEXTURES[int(probs.argmax())], float(probs.max())

    def judge(self, kind: str, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[str, float]:
        if kind not in ("colour", "shape", "texture"):
            raise ValueError(f"kind is {kind!r}; allowed: colour, shape, texture")
        return getattr(self, kind)(image, mask)

    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({**self.shape_mlp.tensors("shape"), **self.texture_mlp.tensors("texture")},
                  str(folder / "judges.safetensors"))
        (folder / "judges.json").write_text(json.dumps(self.info, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path | str | None = None) -> Judges:
        from safetensors.numpy import load_file

        folder = Path(folder or JUDGES_DIR)
        if not (folder / "judges.safetensors").exists():
            raise FileNotFoundError(f"no judges in {folder}; train them with `python -m paint_app.toyworld.judges`")
        tensors = load_file(str(folder / "judges.safetensors"))
        info = json.loads((folder / "judges.json").read_text())
        return cls(MLP.from_tensors(tensors, "shape", SHAPES), MLP.from_tensors(tensors, "texture", TEXTURES), info)


# ----------------------------------------------------------------------------------------------------------------
# Training data from ground-truth renders, and held-out evaluation.


def soften(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A render made a little like a generated image: blurred at random, with mild noise."""
    radius = float(rng.choice([0, 0, 0.5, 0.8, 1.1]))
    out = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)), np.float32) if radius else \
        image.astype(np.float32)
    out += rng.normal(0, 4, out.shape)
    return np.clip(out, 0, 255).round().astype(np.uint8)


def shape_examples(seeds: range, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Silhouettes found by the judge's own segmentation in softened single-object renders."""
    xs, ys = [], []
    for seed in seeds:
        scene = scene_for_seed(seed, n_objects=1)
        vector = silhouette(soften(render(scene).image, rng))
        if vector is not None:
            xs.append(vector)
            ys.append(SHAPES.index(scene.objects[0].shape))
    return np.stack(xs), np.array(ys)


def texture_examples(seeds: range, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Features of each object's region (its ground-truth mask, dilated a little) in softened renders."""
    xs, ys = [], []
    for seed in seeds:
        scene = scene_for_seed(seed)
        rendered = render(scene)
        image = soften(rendered.image, rng)
        for i, obj in enumerate(scene.objects):
            region = ndimage.binary_dilation(rendered.object_id == i + 1, iterations=int(rng.integers(0, 4)))
            region &= (rendered.object_id == 0) | (rendered.object_id == i + 1)
            features = texture_features(image, region)
            if features is not None:
                xs.append(features)
                ys.append(TEXTURES.index(obj.texture))
    return np.stack(xs), np.array(ys)


def evaluate(judges: Judges, seeds: range, rng: np.random.Generator, soft: bool = False) -> dict[str, float]:
    """Accuracy of each judge on every object (>= MIN_OBJECT_PIXELS visible, not touching another) of renders,
    judged inside the object's ground-truth mask dilated by 2 pixels (as a painted region would be)."""
    hits = {"colour": [], "shape": [], "texture": []}
    for seed in seeds:
        scene = scene_for_seed(seed)
        rendered = render(scene)
        image = soften(rendered.image, rng) if soft else rendered.image
        for i, obj in enumerate(scene.objects):
            own = rendered.object_id == i + 1
            region = ndimage.binary_dilation(own, iterations=2)
            others = (rendered.object_id > 0) & ~own
            if own.sum() < MIN_OBJECT_PIXELS or (region & others).any():
                continue
            hits["colour"].append(judges.colour(image, region)[0] == obj.colour)
            hits["shape"].append(judges.shape(image, region)[0] == obj.shape)
            hits["texture"].append(judges.texture(image, region)[0] == obj.texture)
    return {k: float(np.mean(v)) for k, v in hits.items()} | {"objects": len(hits["colour"])}


def train_judges(n_shape: int = 3000, n_texture: int = 3000, seed: int = 0) -> Judges:
    rng = np.random.default_rng(seed)
    x, y = shape_examples(range(JUDGE_SEED_BASE, JUDGE_SEED_BASE + n_shape), rng)
    shape_mlp = fit_mlp(x, y, SHAPES, (64,), seed)
    x, y = texture_examples(range(JUDGE_SEED_BASE + n_shape, JUDGE_SEED_BASE + n_shape + n_texture), rng)
    texture_mlp = fit_mlp(x, y, TEXTURES, (32, 32), seed)
    info = {"trained_on": {"shape_renders": n_shape, "texture_renders": n_texture, "seed": seed,
                           "seeds_from": JUDGE_SEED_BASE},
            "colour_min_fraction": COLOUR_MIN_FRACTION, "shape_input": SHAPE_INPUT}
    return Judges(shape_mlp, texture_mlp, info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paint_app.toyworld.judges", description="train the toy judges")
    parser.add_argument("--out", type=Path, default=JUDGES_DIR)
    parser.add_argument("--eval-scenes", type=int, default=1000)
    args = parser.parse_args(argv)
    judges = train_judges()
    held_out = range(JUDGE_SEED_BASE + 1_000_000, JUDGE_SEED_BASE + 1_000_000 + args.eval_scenes)
    judges.info["held_out_accuracy"] = evaluate(judges, held_out, np.random.default_rng(1))
    judges.info["held_out_accuracy_softened"] = evaluate(judges, held_out, np.random.default_rng(2), soft=True)
    judges.save(args.out)
    print(json.dumps(judges.info, indent=2))
    ok = all(judges.info["held_out_accuracy"][k] >= 0.95 for k in ("colour", "shape", "texture"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
