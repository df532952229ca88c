"""Images sent for vision: decoded, type-checked, and turned back into data URLs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from dataclasses import dataclass

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
    check_readable(data, position)
    return Image(mime_type, data)


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


def check_readable(data: bytes, position: int) -> None:
    """Refuse an image whose header or structure is damaged (Pillow reads it
    without decoding every pixel), or whose size could be a decompression bomb:
    the provider would refuse it after we had paid for the round trip."""
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
