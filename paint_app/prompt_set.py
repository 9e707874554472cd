"""The prompt set ``paint-app prepare`` runs: ``paint_app/assets/prompts/prepare.txt``.

How it was made: ``python -m paint_app.prompt_set > paint_app/assets/prompts/prepare.txt``. A fixed vocabulary of
subjects (objects, animals, people, plants, food, vehicles, buildings), materials, colours, styles and scenes is
combined through a dozen sentence templates by ``random.Random(SEED)``; duplicates are dropped and the first
``COUNT`` prompts kept. Every subject appears in about the same number of prompts and every other word at a
steady rate, so a word that is over-represented among a feature's strongest prompts says something about the
feature, not about the prompt set. The same code and seed always give the same file (a test checks it).
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

SEED = 0
COUNT = 3000
_ARTICLE = re.compile(r"\b[aA] ([aeiou])")
PROMPTS_FILE = Path(__file__).parent / "assets" / "prompts" / "prepare.txt"

SUBJECTS = {
    "animal": "dog cat horse cow sheep pig rabbit fox wolf bear lion tiger elephant giraffe zebra monkey owl eagle "
              "parrot duck swan penguin fish shark whale dolphin octopus turtle frog snake lizard butterfly bee "
              "spider deer squirrel",
    "person": "man woman child girl boy old man old woman astronaut knight wizard dancer chef sailor soldier "
              "farmer robot",
    "object": "chair table lamp clock vase bottle cup teapot book guitar piano violin umbrella hat shoe bag "
              "key candle mirror bicycle kite ball balloon telescope camera phone computer sword crown ring",
    "plant": "tree flower rose sunflower tulip cactus mushroom fern palm tree oak tree bonsai",
    "food": "apple orange banana strawberry cake bread pizza burger sushi ice cream cookie lemon pumpkin",
    "vehicle": "car truck bus train boat ship airplane helicopter motorcycle rocket submarine tractor",
    "building": "house castle church tower bridge lighthouse skyscraper barn temple cabin windmill",
}
MATERIALS = "wooden metal glass stone marble golden silver paper plastic ceramic knitted furry crystal bronze " \
            "leather icy".split()
COLOURS = "red orange yellow green blue purple pink brown black white grey turquoise".split()
STYLES = ["photo", "watercolor painting", "oil painting", "pencil sketch", "charcoal drawing", "cartoon",
          "anime illustration", "pixel art", "3d render", "low poly render", "studio photograph", "vintage photograph",
          "ink drawing", "pop art poster", "mosaic", "stained glass", "origami", "claymation still", "neon sign",
          "impressionist painting"]
SCENES = ["in a forest", "on a beach", "in the desert", "in the snow", "in a city street", "in a kitchen",
          "in a living room", "on a mountain", "under the sea", "in space", "in a field of grass", "at night",
          "at sunset", "in the rain", "on a table", "in a garden", "on a lake", "in a library", "in a cave",
          "on a rooftop"]
TEMPLATES = [
    "a {colour} {subject}",
    "a {material} {subject}",
    "a {subject} {scene}",
    "a {style} of a {subject}",
    "a {style} of a {colour} {subject} {scene}",
    "a {colour} {material} {subject}",
    "a {material} {subject} {scene}",
    "a {style} of a {material} {subject}",
    "a {subject} and a {other} {scene}",
    "a {colour} {subject} next to a {other}",
    "{style}, a {subject}, {scene}",
    "a close-up {style} of a {colour} {subject}",
]


def subjects() -> list[str]:
    """Every subject, in the vocabulary's order (multi-word subjects such as "old man" are one subject)."""
    found = []
    for words in SUBJECTS.values():
        tokens = words.split()
        i = 0
        while i < len(tokens):  # "old man", "palm tree", "ice cream": the adjective or kind joins the next word
            if tokens[i] in ("old", "palm", "oak", "ice") and i + 1 < len(tokens):
                found.append(f"{tokens[i]} {tokens[i + 1]}")
                i += 2
            else:
                found.append(tokens[i])
                i += 1
    return found


def build_prompts(count: int = COUNT, seed: int = SEED) -> list[str]:
    """``count`` distinct prompts from the vocabulary; subjects are dealt round-robin in shuffled order so each
    appears about equally often."""
    rng = random.Random(seed)
    names = subjects()
    prompts: dict[str, None] = {}
    deck: list[str] = []
    while len(prompts) < count:
        if not deck:
            deck = rng.sample(names, len(names))
        subject = deck.pop()
        other = rng.choice([n for n in names if n != subject])
        template = rng.choice(TEMPLATES)
        text = template.format(subject=subject, other=other, colour=rng.choice(COLOURS),
                               material=rng.choice(MATERIALS), style=rng.choice(STYLES), scene=rng.choice(SCENES))
        prompts.setdefault(_ARTICLE.sub(r"an \1", text))
    return list(prompts)


def main() -> int:
    sys.stdout.write("\n".join(build_prompts()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
