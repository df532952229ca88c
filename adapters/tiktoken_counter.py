"""Token counting with tiktoken's encodings (o200k_base, cl100k_base), loaded offline.

tiktoken downloads its encoding files on first use. This package ships the very
same files (adapters/encodings/, gzipped: 2.4 MB, the bytes tiktoken downloads, as
the bpe-openai package also ships them), so the encodings are built from those
copies without the network, and without a 74 MB native library at run time;
tiktoken's own expected hash is still checked, so a wrong file cannot slip in.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from functools import lru_cache
from pathlib import Path

import tiktoken
from tiktoken_ext import openai_public

ENCODINGS = Path(__file__).parent / "encodings"


def _bundled_file(name: str) -> Path:
    return ENCODINGS / f"{name}.tiktoken.gz"


def _bundled_ranks(name: str, expected_hash: str | None = None) -> dict[bytes, int]:
    data = gzip.decompress(_bundled_file(name).read_bytes())
    if expected_hash and hashlib.sha256(data).hexdigest() != expected_hash:
        raise RuntimeError(f"the bundled {name} encoding does not match tiktoken's hash")
    return {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }


@lru_cache(maxsize=None)
def bundled_encoding(name: str) -> tiktoken.Encoding:
    """o200k_base (gpt-4o, gpt-4.1, gpt-5, o-series) or cl100k_base (gpt-4, gpt-3.5),
    from the copy this package ships, without touching the network."""
    if name not in ("o200k_base", "cl100k_base"):
        raise ValueError(f"no bundled copy of the {name} encoding")
    original = openai_public.load_tiktoken_bpe
    # tiktoken_ext builds the encoding's parameters around a loader that
    # downloads; swap in the bundled file just for this call.
    openai_public.load_tiktoken_bpe = lambda url, expected_hash=None: _bundled_ranks(
        name, expected_hash
    )
    try:
        parameters = getattr(openai_public, name)()
    finally:
        openai_public.load_tiktoken_bpe = original
    return tiktoken.Encoding(**parameters)


def encoding_name(model: str) -> str:
    """The encoding a model counts with; o200k_base for names tiktoken does not know
    (newer models use it)."""
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        return "o200k_base"
    return name if name in ("o200k_base", "cl100k_base") else "o200k_base"


class TiktokenCounter:
    """TokenCounter port: counts as the given model does (o200k_base by default)."""

    def __init__(self, encoding: str = "o200k_base") -> None:
        self.encoding = bundled_encoding(encoding)
        self._by_encoding: dict[str, TiktokenCounter] = {encoding: self}

    def for_model(self, model: str) -> TiktokenCounter:
        name = encoding_name(model)
        counter = self._by_encoding.get(name)
        if counter is None:
            counter = self._by_encoding[name] = TiktokenCounter(name)
        return counter

    def count(self, text: str) -> int:
        return len(self.encoding.encode_ordinary(text))

    def tail(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        tokens = self.encoding.encode_ordinary(text)
        if len(tokens) <= max_tokens:
            return text
        return self.encoding.decode(tokens[-max_tokens:])
