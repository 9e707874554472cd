"""The palette's concept tiles: a word -> the edit a pick of its tile paints (``ConceptLibrary.tiles``)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from paint_app.cli import main as paint_app_main
from paint_app.concepts import BlockConcepts, ConceptLibrary, Tile, fit_steps
from paint_app.models import PROFILES
from paint_app.painting import Choice, Concept, Recipe
from sae.labels import Label
from sae.recipes import Edit, Recipes

LATE, COARSE, EARLY = "up_blocks.1.attentions.0", "up_blocks.0.attentions.1", "down_blocks.0.attentions.0"


@pytest.fixture(scope="module")
def toy_concepts(toy) -> ConceptLibrary:
    return ConceptLibrary.load([], toy.profile)


def test_a_words_tile_paints_its_best_recipe_across_blocks(toy, toy_concepts):
    """Red scores 8 of 8 on all three blocks; the late block wins: its other edits for red paint it too (the
    runner-ups decide a tie), and its best is the cheapest edit, an add at the layer defaults."""
    first = toy_concepts.tiles("red", profile=toy.profile)[0]
    assert isinstance(first, Tile) and first.name == "red" and first.measured and first.paintable
    best = toy_concepts.blocks[LATE].recipes.best("red")
    assert first.choice == Choice(Concept(LATE, feature=best.feature), "red",
                                  Recipe(best.mode, best.strength, tuple(best.step_range), best.score))
    assert (best.mode, best.score) == ("add", 1.0) and first.note == "100% of 8 trials"
    assert all(toy_concepts.blocks[b].recipes.best("red").score == 1.0 for b in (EARLY, COARSE))


def test_a_tie_goes_to_the_block_whose_other_edits_score_higher(toy, toy_concepts):
    """Green: 8 of 8 on the early block (a second edit also 8 of 8) and on the late block (its second 7 of 8);
    diamond: 6 of 8 on the coarse block (a second edit also 6 of 8) and on the late block (its second 2 of 8)."""
    for word, block in (("green", EARLY), ("diamond", COARSE)):
        chosen = toy_concepts.tiles(word, profile=toy.profile)[0].choice
        assert chosen.concept.block == block, word
        others = [b for b, e in toy_concepts.blocks.items() if b != block and e.recipes.best(word).score ==
                  toy_concepts.blocks[block].recipes.best(word).score]
        assert others, word  # a real tie
        second = {b: toy_concepts.blocks[b].recipes.edits[word][1].score for b in [block, *others]}
        assert second[block] > max(second[b] for b in others), (word, second)


def test_the_tie_rule_on_made_up_recipes(tiny_sae_paths):
    """Same best score: the block with the better runner-up; same runner-ups: the cheaper edit; then the block."""
    library = ConceptLibrary.load(tiny_sae_paths, PROFILES["tiny-random-sd"])
    a, b = sorted(library.blocks)

    def tile(recipes_a, recipes_b):
        entries = {name: BlockConcepts(name, e.sae, e.source, e.labels, e.factors, e.prototypes, e.examples,
                                       Recipes({"red thing": edits}, 8))
                   for (name, e), edits in zip(sorted(library.blocks.items()), (recipes_a, recipes_b))}
        return ConceptLibrary(entries).tiles("red thing")[0].choice

    add, fill = (Edit("add", feature=0, strength=8.0, score=1.0), Edit("fill", feature=0, score=1.0))
    half = Edit("add", feature=1, strength=8.0, score=0.5)
    assert tile([fill, half], [fill, Edit("add", feature=1, score=0.875)]).concept.block == b
    assert tile([fill, half], [add, half]).recipe.mode == "add"
    assert tile([add, half], [add, half]).concept.block == a


def test_search_puts_an_exact_name_first_then_measured_then_by_score(toy, toy_concepts):
    names = [t.name for t in toy_concepts.tiles("RED", profile=toy.profile)]
    assert names == ["red", "red (nmf)"]
    tiles = toy_concepts.tiles("re", profile=toy.profile)  # no exact name: measured first, best score first
    assert [t.name for t in tiles if t.measured] == ["green", "red", "square"]
    assert tiles.index(next(t for t in tiles if not t.measured)) == 3
    everything = toy_concepts.tiles(profile=toy.profile)
    measured = [t for t in everything if t.measured]
    assert everything[: len(measured)] == measured and len(measured) == 14  # 7 colours, 3 textures, 4 shapes
    assert [t.choice.recipe.score for t in measured] == sorted((t.choice.recipe.score for t in measured), reverse=True)
    assert len({t.name.lower() for t in everything}) == len(everything)
    assert toy_concepts.tiles(profile=toy.profile)[0] is everything[0]  # built once per library and defaults


def test_the_users_own_concepts_are_tiles(toy, toy_concepts):
    mine = Choice(Concept.of_mix(LATE, {93: 1.0, 177: 0.5}), " my red ")
    tiles = toy_concepts.tiles("red", [mine], toy.profile)
    assert [t.name for t in tiles] == ["red", "my red", "red (nmf)"]
    tile = tiles[1]
    assert tile.choice.source == "mine" and not tile.measured and tile.paintable and tile.note == "yours: not measured"
    assert tile.choice.recipe == Recipe("add", 32.0, (2, 8)) and tile.choice.concept == mine.concept
    measured = replace(mine, label="strong red", recipe=Recipe("set", 2.0, None, 0.5))
    assert toy_concepts.tiles("strong", [measured], toy.profile)[0].choice.recipe == measured.recipe
    elsewhere = Choice(Concept("mid_block.attentions.0", feature=3), "lost")
    lost = toy_concepts.tiles("lost", [elsewhere], toy.profile)[0]
    assert not lost.paintable and lost.why_not == "no SAE for block mid_block.attentions.0"


def test_without_recipes_a_tile_paints_the_best_feature_for_its_label(tiny_sae_paths):
    """tiny-random-sd with SAEs labelled 'red thing', 'blue thing', 'striped' (no trial scores, no recipes): the
    best-ranked feature for the label, added with the model's layer defaults, and the tile says so."""
    profile = PROFILES["tiny-random-sd"]
    library = ConceptLibrary.load(tiny_sae_paths, profile)
    tiles = library.tiles("red", profile=profile)
    assert [t.name for t in tiles] == ["red thing"]
    tile = tiles[0]
    best = library.feature_rows(search="red thing", rank="write")[0]
    assert tile.choice == Choice(Concept(best["block"], feature=best["feature"]), "red thing",
                                 Recipe("add", profile.layer_strength, profile.layer_step_range, None))
    assert (best["block"], best["feature"]) == ("down_blocks.0.attentions.0", 0)
    assert not tile.measured and tile.paintable and tile.note == "not measured: best feature for 'red thing'"
    names = {t.name for t in library.tiles(profile=profile)}
    assert names == {"red thing", "blue thing", "striped", "factor 0", "factor 1", "factor 2"}
    assert not any(t.measured for t in library.tiles(profile=profile))
    # the layer defaults' step range, fitted to the model's steps (4)
    late = replace(profile, layer_strength=12.0, layer_step_range=(2, 8))
    assert library.tiles("striped", profile=late)[0].choice.recipe == Recipe("add", 12.0, (2, 4), None)
    assert fit_steps((6, 8), 4) is None and fit_steps(None, 4) is None


def test_every_paintable_tile_carries_its_edit_and_is_named_after_itself(toy, toy_concepts, tiny_sae_paths):
    """The page and the pictures paint ``tile.choice`` as it is: a recipe on every paintable tile, its label the
    tile's name."""
    tiny = ConceptLibrary.load(tiny_sae_paths)
    custom = [Choice(Concept.of_mix("mid_block.attentions.0", {1: 1.0}), " mine ")]
    for library, profile in ((toy_concepts, toy.profile), (tiny, None)):
        tiles = [tile for tile in library.tiles(custom=custom, profile=profile) if tile.paintable]
        assert tiles and all(tile.choice.recipe is not None and tile.choice.label == tile.name for tile in tiles)


def test_a_label_with_no_feature_paints_its_factor(tiny_sae_paths):
    library = ConceptLibrary.load(tiny_sae_paths, PROFILES["tiny-random-sd"])
    tile = library.tiles("factor 1")[0]
    assert tile.choice.concept.factor == 1 and tile.choice.recipe.mode == "add" and not tile.measured
    assert tile.note == "not measured: factor labelled 'factor 1'"


def test_labels_are_trimmed_and_deduplicated_without_case(tiny_sae_paths):
    library = ConceptLibrary.load(tiny_sae_paths, PROFILES["tiny-random-sd"])
    entry = library.blocks["mid_block.attentions.0"]
    entry.labels = {**entry.labels, 5: Label("  Red Thing ", 0.5, "user"), 6: Label("a very long phrase", 1.0, "x")}
    names = [t.name for t in library.tiles("thing")]
    assert sorted(names) == ["blue thing", "red thing"]
    assert [t.name for t in library.tiles("long")] == ["a very long phrase"]


def test_the_cli_lists_the_tiles_in_the_palettes_order(toy, capsys):
    assert paint_app_main(["features", "--model", "toy", "--search", "red", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["name"], r["block"], r["mode"], r["feature"], r["factor"], r["strength"], r["step_range"], r["score"],
             r["measured"]) for r in rows] == [("red", LATE, "add", 93, None, 32.0, [2, 8], 1.0, True),
                                               ("red (nmf)", LATE, "add", None, 13, 32.0, [2, 8], None, False)]
    assert paint_app_main(["features", "--model", "toy", "--search", "red"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == \
        f"red\t{LATE}\tadd feature 93 (strength 32, steps [2, 8])\t100% of 8 trials"
    assert paint_app_main(["features", "--model", "toy", "--search", "red", "--rank", "replace"]) == 2
    assert "--rank is 'replace'; allowed only with --features" in capsys.readouterr().err
    assert paint_app_main(["features", "--model", "toy", "--search", "zebra"]) == 0
    assert "no concept name matches 'zebra'" in capsys.readouterr().err


def test_paintbench_tile_mode_paints_the_first_tile_of_each_word(toy):
    from paint_app.engine import Engine
    from paint_app.toyworld.bench import Bench
    from paint_app.toyworld.judges import Judges

    concepts = ConceptLibrary.load([], toy.profile)
    bench = Bench(Engine(toy, concepts), Judges.load(), toy.profile.layer_strength, 1, keep_outside=True,
                  mode="tile")
    result = bench.run_tile("red")
    assert (result.block, result.feature, result.feature_score) == (LATE, 93, 1.0)
    assert result.edit == "'red': add feature 93, strength 32, steps [2, 8]"
    assert result.success_feature == 1.0 and result.far_leakage_feature == 0.0
