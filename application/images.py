"""Images sent for vision: decoded, type-checked, and turned back into data URLs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import re
import warnings
from dataclasses import dataclass, field
from fractions import Fraction

from PIL import Image as Picture

# The image types the OpenAI vision models accept, recognised by their magic bytes
# rather than by what the sender claims.
_SIGNATURES: list[tuple[bytes, str]] = [
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
]
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w=.+-]+)*;base64,(.*)$", re.DOTALL)

MAX_IMAGE_BYTES = 20 * 1024 * 1024


class InvalidImage(ValueError):
    """An image that cannot be sent to the model."""


@dataclass(frozen=True)
class Image:
    mime_type: str
    data: bytes
    # Pixel size as Pillow read it (0 = unknown, e.g. built by hand). Derived from
    # `data`, so left out of equality: two images with the same bytes are equal.
    width: int = field(default=0, compare=False)
    height: int = field(default=0, compare=False)

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    @property
    def data_url(self) -> str:
        return f"data:{self.mime_type};base64,{base64.b64encode(self.data).decode()}"


def sniff_mime_type(data: bytes) -> str | None:
    for signature, mime_type in _SIGNATURES:
        if data.startswith(signature):
            return mime_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def decode_image(encoded: object, position: int) -> Image:
    """Decode one base64 image (or data: URL); position is 1-based, for messages."""
    if not isinstance(encoded, str) or not encoded.strip():
        raise InvalidImage(f"image {position} must be a non-empty base64 string")
    payload = encoded.strip()
    match = _DATA_URL.match(payload)
    if match:
        payload = match.group(3)
    elif payload.startswith("data:"):
        raise InvalidImage(f"image {position} is a data URL without base64 content")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"image {position} is not valid base64") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidImage(
            f"image {position} is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}"
        )
    mime_type = sniff_mime_type(data)
    if mime_type is None:
        raise InvalidImage(
            f"image {position} is not a supported type (PNG, JPEG, GIF or WEBP)"
        )
    width, height = check_readable(data, position)
    return Image(mime_type, data, width, height)


def _ends_whole(data: bytes) -> bool:
    """JPEG and GIF end with a marker; Pillow's verify() does not read that far."""
    if data.startswith(b"\xff\xd8\xff"):
        return data.rstrip(b"\x00").endswith(b"\xff\xd9")  # some encoders pad
    if data.startswith(b"GIF8"):
        return data.rstrip(b"\x00").endswith(b";")
    return True


# More pixels than any image the vision models take in full (they scale down to
# 2048 x 768 tiles), and far below what could exhaust memory when decoded.
MAX_PIXELS = 50_000_000


def check_readable(data: bytes, position: int) -> tuple[int, int]:
    """Refuse an image whose header or structure is damaged (Pillow reads it
    without decoding every pixel), or whose size could be a decompression bomb:
    the provider would refuse it after we had paid for the round trip.
    Returns its (width, height) in pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Picture.DecompressionBombWarning)
            with Picture.open(io.BytesIO(data)) as picture:
                width, height = picture.size
                picture.verify()
    except (Picture.DecompressionBombWarning, Picture.DecompressionBombError):
        raise InvalidImage(f"image {position} has too many pixels") from None
    except Exception:  # Pillow's errors on hostile bytes are many and varied
        raise InvalidImage(f"image {position} is damaged or truncated") from None
    if not _ends_whole(data):
        raise InvalidImage(f"image {position} is damaged or truncated")
    if width * height > MAX_PIXELS:
        raise InvalidImage(
            f"image {position} is {width} x {height} pixels; the limit is {MAX_PIXELS:,}"
        )
    return width, height


# --- What an image costs in prompt tokens -------------------------------------
#
# OpenAI's published rule ("Calculating costs" in its images and vision guide).
#
# Tile models, detail "high" (and "auto", counted as high: the worst case, and
# what we budget): scale to fit within 2048 x 2048 keeping the aspect ratio, then
# so that the shortest side is 768 px (both only ever downwards), then count the
# 512-px tiles that cover the result: base + per_tile x tiles. Detail "low" costs
# the base only. The scaled sizes are kept as exact fractions rather than rounded
# to whole pixels (the guide does not say how it rounds): a side that lands a
# fraction above a tile edge counts the extra tile, so the count never falls short.
#
# Patch models: count the 32-px patches that cover the image; above 1536 the image
# is first scaled down so that no more than 1536 patches cover it (the guide's
# shrink factor, computed here in integers), and the count is capped at 1536; the
# tokens are the patches times a per-model multiplier (rounded up). The guide gives
# these models no "detail" setting, so it changes nothing for them.

_TILE_BOX = 2048
_SHORT_SIDE = 768
_TILE = 512
_PATCH = 32
_MAX_PATCHES = 1536

# The most tiles any image can need at high detail. After the first step both
# sides are at most 2048 px (4 tiles); after the second the shorter side is at
# most 768 px (2 tiles), so no image needs more than 4 x 2 = 8, and a 2048 x 768
# image (or any wider than 8:3, e.g. 4000 x 1000 -> 2048 x 512) needs exactly that.
MAX_TILES = (_TILE_BOX // _TILE) * math.ceil(_SHORT_SIDE / _TILE)


@dataclass(frozen=True)
class TileCost:
    base: int
    per_tile: int


@dataclass(frozen=True)
class PatchCost:
    multiplier: Fraction


_GPT_4O = TileCost(85, 170)

# Model families by name prefix; dated snapshots ("gpt-4o-mini-2024-07-18") match
# their family. Looked up longest prefix first, so "gpt-4o-mini" is never taken
# for "gpt-4o", nor "gpt-4.1-mini" for "gpt-4.1".
_VISION_COSTS: dict[str, TileCost | PatchCost] = {
    "gpt-4o-mini": TileCost(2833, 5667),
    "gpt-4o": _GPT_4O,
    "chatgpt-4o-latest": _GPT_4O,
    "gpt-4o-latest": _GPT_4O,
    "gpt-4.1-mini": PatchCost(Fraction("1.62")),
    "gpt-4.1-nano": PatchCost(Fraction("2.46")),
    "gpt-4.1": _GPT_4O,
    "gpt-4.5": _GPT_4O,
    "o1": TileCost(75, 150),
    "o3": TileCost(75, 150),
    "o4-mini": PatchCost(Fraction("1.72")),
    "gpt-5-mini": PatchCost(Fraction("1.62")),
    "gpt-5-nano": PatchCost(Fraction("2.46")),
    "gpt-5": TileCost(70, 140),
}
_PREFIXES = sorted(_VISION_COSTS, key=len, reverse=True)
# A model we do not know is counted by the costliest rule (gpt-4o-mini's): the
# budget holds the worst case before the call and settles with the truth after.
_UNKNOWN_MODEL = _VISION_COSTS["gpt-4o-mini"]


def vision_cost(model: str) -> TileCost | PatchCost:
    """How the model prices images. A fine-tuned model ("ft:gpt-4o-mini-…:org::id")
    or one named with a provider ("azure/gpt-4o") is priced as its base model."""
    name = model.strip().lower().rsplit("/", 1)[-1].removeprefix("ft:")
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return _VISION_COSTS[prefix]
    return _UNKNOWN_MODEL


def image_tokens(width: int, height: int, model: str, detail: str = "auto") -> int:
    """Prompt tokens one image costs the model, by OpenAI's published rule.

    A size of 0 (unknown) counts as the worst case for the model at high detail:
    MAX_TILES tiles for a tile model, 1536 patches for a patch model."""
    cost = vision_cost(model)
    known = width > 0 and height > 0
    if isinstance(cost, PatchCost):
        patches = _patches(width, height) if known else _MAX_PATCHES
        return math.ceil(patches * cost.multiplier)
    if detail == "low":
        return cost.base
    tiles = _tiles(width, height) if known else MAX_TILES
    return cost.base + cost.per_tile * tiles


def _tiles(width: int, height: int) -> int:
    w, h = Fraction(width), Fraction(height)
    if max(w, h) > _TILE_BOX:
        scale = _TILE_BOX / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > _SHORT_SIDE:
        scale = _SHORT_SIDE / min(w, h)
        w, h = w * scale, h * scale
    return math.ceil(w / _TILE) * math.ceil(h / _TILE)


def _patches(width: int, height: int) -> int:
    patches = math.ceil(width / _PATCH) * math.ceil(height / _PATCH)
    if patches > _MAX_PATCHES:
        # The guide's shrink factor r = sqrt(32^2 * 1536 / (w * h)), narrowed so
        # that one side fills a whole number of patches: w * r / 32 is
        # sqrt(1536 * w / h), whose floor is isqrt(1536 * w // h).
        across = max(math.isqrt(_MAX_PATCHES * width // height), 1)
        down = max(math.isqrt(_MAX_PATCHES * height // width), 1)
        scale = min(Fraction(_PATCH * across, width), Fraction(_PATCH * down, height))
        patches = math.ceil(width * scale / _PATCH) * math.ceil(height * scale / _PATCH)
    return min(patches, _MAX_PATCHES)
