"""Image tokens by OpenAI's published rule, checked against the guide's own examples."""

import base64
import io
import itertools

import pytest
from PIL import Image as Picture

from application.images import (
    MAX_TILES,
    Image,
    PatchCost,
    TileCost,
    decode_image,
    image_tokens,
    vision_cost,
)


def encoded(width: int, height: int, kind: str = "PNG") -> str:
    buffer = io.BytesIO()
    Picture.new("RGB", (width, height), "teal").save(buffer, kind)
    return base64.b64encode(buffer.getvalue()).decode()


# --- the guide's worked examples (gpt-4o: 85 base, 170 a tile) -------------------

def test_a_square_1024_image_at_high_detail_is_four_tiles():
    # 1024 x 1024 fits in 2048; its shortest side scales to 768 -> 768 x 768 -> 2 x 2 tiles.
    assert image_tokens(1024, 1024, "gpt-4o", "high") == 85 + 4 * 170 == 765


def test_a_2048_by_4096_image_at_high_detail_is_six_tiles():
    # -> 1024 x 2048 to fit the 2048 box -> 768 x 1536 -> 2 x 3 tiles.
    assert image_tokens(2048, 4096, "gpt-4o", "high") == 85 + 6 * 170 == 1105


def test_low_detail_costs_the_base_only_whatever_the_size():
    assert image_tokens(4096, 8192, "gpt-4o", "low") == 85
    assert image_tokens(0, 0, "gpt-4o", "low") == 85


def test_auto_is_counted_as_high():
    assert image_tokens(2048, 4096, "gpt-4o") == image_tokens(2048, 4096, "gpt-4o", "auto") == 1105


def test_gpt_4o_mini_has_its_own_base_and_tile_price():
    assert image_tokens(1024, 1024, "gpt-4o-mini", "high") == 2833 + 4 * 5667
    assert image_tokens(1024, 1024, "gpt-4o-mini", "low") == 2833


# --- the scaling steps -----------------------------------------------------------

def test_a_small_image_is_never_scaled_up_and_is_one_tile():
    assert image_tokens(100, 100, "gpt-4o", "high") == 85 + 170
    assert image_tokens(512, 512, "gpt-4o", "high") == 85 + 170
    # A side one pixel over a tile needs a second tile (no upscaling to 768 first,
    # no rounding down either).
    assert image_tokens(513, 100, "gpt-4o", "high") == 85 + 2 * 170
    assert image_tokens(700, 700, "gpt-4o", "high") == 85 + 4 * 170


def test_the_shortest_side_is_scaled_to_768_only_when_longer():
    # 1600 x 800 -> 1536 x 768 -> 3 x 2 tiles; without that step it would be 4 x 2.
    assert image_tokens(1600, 800, "gpt-4o", "high") == 85 + 6 * 170
    # 3000 x 1000: box -> 2048 x 682.7 (short side under 768, left alone) -> 4 x 2.
    assert image_tokens(3000, 1000, "gpt-4o", "high") == 85 + 8 * 170
    # Portrait and landscape cost the same.
    assert image_tokens(800, 1600, "gpt-4o", "high") == image_tokens(1600, 800, "gpt-4o", "high")


def test_the_worst_case_is_eight_tiles_and_unknown_size_costs_it():
    assert MAX_TILES == 8
    worst = 85 + 8 * 170
    assert image_tokens(2048, 768, "gpt-4o", "high") == worst
    assert image_tokens(0, 0, "gpt-4o", "high") == worst
    assert image_tokens(0, 500, "gpt-4o") == worst
    assert image_tokens(0, 0, "gpt-4o-mini") == 2833 + 8 * 5667
    # No size needs more than the worst case.
    sides = [1, 100, 511, 512, 513, 767, 768, 769, 1000, 1024, 1025, 1536, 1537, 2047,
             2048, 2049, 3000, 4096, 8192, 20000]
    most = max(image_tokens(w, h, "gpt-4o", "high") for w, h in itertools.product(sides, sides))
    assert most == worst


# --- model families ----------------------------------------------------------------

@pytest.mark.parametrize(
    ("model", "cost"),
    [
        ("gpt-4o", TileCost(85, 170)),
        ("gpt-4o-2024-08-06", TileCost(85, 170)),
        ("chatgpt-4o-latest", TileCost(85, 170)),
        ("gpt-4.1", TileCost(85, 170)),
        ("gpt-4.1-2025-04-14", TileCost(85, 170)),
        ("gpt-4.5-preview", TileCost(85, 170)),
        ("something-new", TileCost(2833, 5667)),  # unknown: the costliest rule
        ("gpt-4o-mini", TileCost(2833, 5667)),
        ("gpt-4o-mini-2024-07-18", TileCost(2833, 5667)),
        ("GPT-4o-mini", TileCost(2833, 5667)),
        ("o1", TileCost(75, 150)),
        ("o3-2025-04-16", TileCost(75, 150)),
        ("gpt-5", TileCost(70, 140)),
        ("gpt-5-2025-08-07", TileCost(70, 140)),
        ("gpt-5-chat-latest", TileCost(70, 140)),
    ],
)
def test_tile_models_by_prefix(model, cost):
    assert vision_cost(model) == cost
    assert image_tokens(1024, 1024, model, "high") == cost.base + 4 * cost.per_tile


@pytest.mark.parametrize(
    ("model", "multiplier"),
    [
        ("gpt-4.1-mini", "1.62"),
        ("gpt-4.1-mini-2025-04-14", "1.62"),
        ("gpt-4.1-nano", "2.46"),
        ("gpt-4.1-nano-2025-04-14", "2.46"),
        ("o4-mini", "1.72"),
        ("o4-mini-2025-04-16", "1.72"),
        ("gpt-5-mini", "1.62"),
        ("gpt-5-nano-2025-08-07", "2.46"),
    ],
)
def test_patch_models_by_prefix(model, multiplier):
    from fractions import Fraction

    assert vision_cost(model) == PatchCost(Fraction(multiplier))


# --- patch models (32-px patches, at most 1536, times a multiplier) ---------------

def test_patch_rule_counts_32_px_patches_times_the_multiplier_rounded_up():
    # The guide's example: 1024 x 1024 is 32 x 32 = 1024 patches.
    assert image_tokens(1024, 1024, "gpt-4.1-mini") == 1659  # 1024 * 1.62 = 1658.88
    assert image_tokens(1024, 1024, "gpt-4.1-nano") == 2520  # 1024 * 2.46 = 2519.04
    assert image_tokens(1024, 1024, "o4-mini") == 1762  # 1024 * 1.72 = 1761.28
    assert image_tokens(100, 100, "gpt-4.1-mini") == 26  # 4 x 4 = 16 patches * 1.62 = 25.92
    assert image_tokens(33, 1, "gpt-4.1-mini") == 4  # 2 patches * 1.62 = 3.24


def test_patch_rule_scales_a_large_image_to_at_most_1536_patches():
    # The guide's example: 1800 x 2400 is 57 x 75 = 4275 patches; scaled to
    # 1056 x 1408 it is 33 x 44 = 1452 patches.
    assert image_tokens(1800, 2400, "gpt-4.1-mini") == 2353  # 1452 * 1.62 = 2352.24
    assert image_tokens(2400, 1800, "gpt-4.1-mini") == 2353
    # Exactly at the cap: not scaled.
    assert image_tokens(2048, 768, "gpt-4.1-mini") == 2489  # 1536 * 1.62 = 2488.32
    for w, h in itertools.product([1, 31, 640, 1600, 2049, 4000, 9999, 100000], repeat=2):
        assert image_tokens(w, h, "gpt-4.1-mini") <= 2489


def test_detail_does_not_change_a_patch_model_and_unknown_size_is_the_cap():
    assert image_tokens(1024, 1024, "gpt-4.1-mini", "low") == 1659
    assert image_tokens(0, 0, "gpt-4.1-mini") == 2489
    assert image_tokens(0, 0, "gpt-4.1-nano", "low") == 3779  # 1536 * 2.46 = 3778.56


# --- decode_image fills in the size ------------------------------------------------

@pytest.mark.parametrize("kind", ["PNG", "JPEG", "GIF", "WEBP"])
def test_decode_image_reads_width_and_height(kind):
    image = decode_image(encoded(64, 48, kind), 1)
    assert (image.width, image.height) == (64, 48)


def test_size_is_derived_and_left_out_of_equality():
    image = decode_image(encoded(3, 2), 1)
    assert image == Image(image.mime_type, image.data)
    assert Image("image/png", b"x").width == Image("image/png", b"x").height == 0


def test_fine_tuned_provider_named_and_unknown_models_are_never_undercounted():
    mini = image_tokens(1024, 1024, "gpt-4o-mini")
    assert image_tokens(1024, 1024, "ft:gpt-4o-mini-2024-07-18:acme::abc123") == mini
    assert image_tokens(1024, 1024, "azure/gpt-4o-mini") == mini
    assert image_tokens(1024, 1024, "openai/gpt-4o") == 765
    # A model nobody knows is held at the costliest rule, not the cheapest.
    assert image_tokens(1024, 1024, "some-new-vision-model") == mini
