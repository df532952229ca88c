"""Token counting with tiktoken's o200k_base encoding, loaded offline.

tiktoken downloads its encoding files on first use. The bpe-openai package ships
the very same o200k_base file, so the encoding is built from that copy; tiktoken's
own expected hash is still checked, so a wrong file cannot slip in.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import tiktoken
from tiktoken_ext import openai_public


def _bundled_file() -> Path:
    # Located without importing bpe_openai, whose import loads all of its own
    # encodings: seconds of start-up and tens of MiB for nothing.
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the bpe-openai package (which ships o200k_base) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "o200k_base.tiktoken.gz"


def _bundled_ranks(_url: str, expected_hash: str | None = None) -> dict[bytes, int]:
    data = gzip.decompress(_bundled_file().read_bytes())
    if expected_hash and hashlib.sha256(data).hexdigest() != expected_hash:
        raise RuntimeError("the bundled o200k_base encoding does not match tiktoken's hash")
    return {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }


@lru_cache(maxsize=1)
def o200k_base() -> tiktoken.Encoding:
    """The o200k_base encoding (gpt-4o family), without touching the network."""
    original = openai_public.load_tiktoken_bpe
    # tiktoken_ext builds the encoding's parameters around a loader that
    # downloads; swap in the bundled file just for this call.
    openai_public.load_tiktoken_bpe = _bundled_ranks
    try:
        parameters = openai_public.o200k_base()
    finally:
        openai_public.load_tiktoken_bpe = original
    return tiktoken.Encoding(**parameters)


class TiktokenCounter:
    """TokenCounter port: counts as the gpt-4o family of models does."""

    def __init__(self) -> None:
        self.encoding = o200k_base()

    def count(self, text: str) -> int:
        return len(self.encoding.encode_ordinary(text))

    def tail(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        tokens = self.encoding.encode_ordinary(text)
        if len(tokens) <= max_tokens:
            return text
        return self.encoding.decode(tokens[-max_tokens:])
