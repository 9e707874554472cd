"""The toy world: seeded scenes of flat shapes on backgrounds, their captions and per-pixel ground truth.

A scene is 1-3 objects (shape, colour, texture, position cell, size) on a background. ``render`` draws it at
64x64 and returns the RGB image with ground-truth maps (object id, shape, colour, texture, background), each
an integer map whose values index the tuples below (0 = none for the object maps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIZE = 64
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 35, 35),
    "green": (40, 185, 60),
    "blue": (40, 70, 225),
    "yellow": (245, 220, 40),
    "orange": (250, 140, 20),
    "purple": (145, 50, 195),
    "pink": (250, 130, 200),
}
TEXTURES = ("plain", "striped", "dotted")
BACKGROUNDS = {  # name: (base RGB, per-pixel noise amplitude)
    "grass": ((95, 130, 80), 10),
    "sand": ((225, 205, 160), 8),
    "sky": ((165, 205, 240), 0),
    "water": ((40, 90, 115), 6),
}
# Position cells of a 3x3 grid, row-major, with the words a caption uses for each.
POSITIONS = (
    "at the top left", "at the top", "at the top right",
    "on the left", "in the middle", "on the right",
    "at the bottom left", "at the bottom", "at the bottom right",
)
PATTERN_SHADE = 0.45  # stripes and dots are the object's colour darkened to this factor
COLOUR_NAMES = tuple(COLOURS)
BACKGROUND_NAMES = tuple(BACKGROUNDS)


def vocabulary() -> list[str]:
    """Every word a caption of the grammar can use."""
    words = {"a", "and", "on"}
    for phrase in POSITIONS:
        words.update(phrase.split())
    words.update(SHAPES, COLOURS, TEXTURES, BACKGROUNDS)
    return sorted(words)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    texture: str
    cell: int  # index into POSITIONS
    cx: float
    cy: float
    radius: float


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[SceneObject, ...]
    noise_seed: int = 0
    extras: dict = field(default_factory=dict, compare=False)


def random_scene(rng: np.random.Generator, n_objects: int | None = None, shape: str | None = None,
                 colour: str | None = None, texture: str | None = None, background: str | None = None,
                 cell: int | None = None) -> Scene:
    """A random scene; the keyword arguments pin the first object's attributes or the background."""
    n = n_objects or int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    cells = rng.permutation(9)[:n].tolist()
    if cell is not None:
        cells = [cell] + [c for c in cells if c != cell][: n - 1]
    objects = []
    for i, c in enumerate(cells):
        radius = float(rng.uniform(10, 15) if n == 1 else rng.uniform(8, 11))
        row, col = divmod(c, 3)
        cx = (col + 0.5) * SIZE / 3 + rng.uniform(-3, 3)
        cy = (row + 0.5) * SIZE / 3 + rng.uniform(-3, 3)
        objects.append(SceneObject(
            shape=(shape if i == 0 and shape else str(rng.choice(SHAPES))),
            colour=(colour if i == 0 and colour else str(rng.choice(COLOUR_NAMES))),
            texture=(texture if i == 0 and texture else str(rng.choice(TEXTURES))),
            cell=c, cx=float(cx), cy=float(cy), radius=radius,
        ))
    bg = background or str(rng.choice(BACKGROUND_NAMES))
    return Scene(bg, tuple(objects), int(rng.integers(2**31)))


def scene_for_seed(seed: int, **pins) -> Scene:
    return random_scene(np.random.default_rng(seed), **pins)


# ----------------------------------------------------------------------------------------------------------------
# Rendering and ground truth.

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5


def shape_mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = _XX - cx, _YY - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        half = r * 0.85
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        top, bottom = -r, r * 0.8
        rows = (dy >= top) & (dy <= bottom)
        return rows & (np.abs(dx) <= (dy - top) / (bottom - top) * r * 1.05)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r * 1.1
    raise ValueError(f"shape is {shape!r}; allowed: {', '.join(SHAPES)}")


def texture_pattern(texture: str) -> np.ndarray:
    """Where a texture darkens the object (a full 64x64 boolean map)."""
    x, y = _XX.astype(int), _YY.astype(int)
    if texture == "plain":
        return np.zeros((SIZE, SIZE), bool)
    # Patterns on the 4-pixel grid of the VAE's latent cells: each cell is all pattern or none.
    if texture == "striped":
        return (y // 4) % 2 == 1
    if texture == "dotted":
        return ((x // 4) % 2 == 1) & ((y // 4) % 2 == 1)
    raise ValueError(f"texture is {texture!r}; allowed: {', '.join(TEXTURES)}")


def background_image(name: str, noise_seed: int) -> np.ndarray:
    base, amplitude = BACKGROUNDS[name]
    image = np.broadcast_to(np.array(base, np.float32), (SIZE, SIZE, 3)).copy()
    if name == "sky":  # a gentle vertical gradient
        image += (np.linspace(-12, 12, SIZE, dtype=np.float32)[:, None, None])
    if amplitude:
        noise = np.random.default_rng(noise_seed).uniform(-amplitude, amplitude, (SIZE, SIZE, 1)).astype(np.float32)
        image += noise
    return image


@dataclass
class Rendered:
    image: np.ndarray  # uint8 [64, 64, 3]
    object_id: np.ndarray  # uint8 [64, 64]: 0 background, i+1 for scene.objects[i] (visible pixels)
    shape: np.ndarray  # 0 none, 1 + SHAPES index
    colour: np.ndarray  # 0 none, 1 + COLOUR_NAMES index
    texture: np.ndarray  # 0 none, 1 + TEXTURES index
    background: np.ndarray  # 0 where an object is, 1 + BACKGROUND_NAMES index elsewhere


def render(scene: Scene) -> Rendered:
    image = background_image(scene.background, scene.noise_seed)
    object_id = np.zeros((SIZE, SIZE), np.uint8)
    for i, obj in enumerate(scene.objects):
        mask = shape_mask(obj.shape, obj.cx, obj.cy, obj.radius)
        colour = np.array(COLOURS[obj.colour], np.float32)
        dark = texture_pattern(obj.texture) & mask
        image[mask] = colour
        image[dark] = colour * PATTERN_SHADE
        object_id[mask] = i + 1
    lookup = {
        "shape": [0] + [1 + SHAPES.index(o.shape) for o in scene.objects],
        "colour": [0] + [1 + COLOUR_NAMES.index(o.colour) for o in scene.objects],
        "texture": [0] + [1 + TEXTURES.index(o.texture) for o in scene.objects],
    }
    maps = {key: np.asarray(values, np.uint8)[object_id] for key, values in lookup.items()}
    background = np.where(object_id == 0, 1 + BACKGROUND_NAMES.index(scene.background), 0).astype(np.uint8)
    return Rendered(np.clip(image, 0, 255).round().astype(np.uint8), object_id, maps["shape"], maps["colour"],
                    maps["texture"], background)


# ----------------------------------------------------------------------------------------------------------------
# Captions.


def object_phrase(obj: SceneObject, texture: bool, position: bool, colour: bool = True) -> str:
    words = ["a", obj.colour] if colour else ["a"]
    if texture:
        words.append(obj.texture)
    words.append(obj.shape)
    if position:
        words.append(POSITIONS[obj.cell])
    return " ".join(words)


def caption(scene: Scene, rng: np.random.Generator | None = None, form: str = "random") -> str:
    """A caption of the scene. ``form``: ``plain`` (``a red circle``, first object only), ``full`` (every
    object with texture and position, and the background) or ``random`` (attributes mentioned at random)."""
    if form == "plain":
        return object_phrase(scene.objects[0], texture=False, position=False)
    if form == "full":
        phrases = [object_phrase(o, True, True) for o in scene.objects]
        return " and ".join(phrases) + f" on {scene.background}"
    if rng is None:
        raise ValueError("a random caption needs an rng")
    say_texture, say_position = rng.random() < 0.5, rng.random() < 0.4
    text = " and ".join(object_phrase(o, say_texture, say_position) for o in scene.objects)
    if rng.random() < 0.4:
        text += f" on {scene.background}"
    return text


def partial_caption(scene: Scene, rng: np.random.Generator, drop: float) -> str:
    """A random caption that leaves things out, as real captions do: each object unmentioned with probability
    ``drop``, and each mentioned object's colour unsaid with probability ``drop``. With no object left it is
    "" or, when the background is named, the background's name alone (``grass``)."""
    say_texture, say_position = rng.random() < 0.5, rng.random() < 0.4
    phrases = [object_phrase(o, say_texture, say_position, colour=rng.random() >= drop)
               for o in scene.objects if rng.random() >= drop]
    text = " and ".join(phrases)
    if rng.random() < 0.4:
        text = f"{text} on {scene.background}" if text else scene.background
    return text


def prompts(n: int, seed_base: int, form: str = "random") -> list[str]:
    """``n`` captions of seeded scenes (seeds ``seed_base..``), e.g. for ``sae collect --prompts``."""
    return [caption(scene_for_seed(seed_base + i), np.random.default_rng(seed_base + i), form) for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m paint_app.toyworld.world",
                                     description="write captions of seeded toy-world scenes, one per line")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed-base", type=int, default=40_000_000)
    parser.add_argument("--form", choices=("random", "plain", "full"), default="random")
    parser.add_argument("--out", default="-")
    args = parser.parse_args(argv)
    text = "\n".join(prompts(args.n, args.seed_base, args.form)) + "\n"
    if args.out == "-":
        print(text, end="")
    else:
        with open(args.out, "w") as handle:
            handle.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
