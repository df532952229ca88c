"""A Secret volume mounted the way the kubelet does it, and a clock moved by hand:
for tests of the API key's sources, as an adapter and end to end."""

from __future__ import annotations

import os
from pathlib import Path


class MountedSecret:
    """A Secret volume as the kubelet writes it: files in a timestamped directory,
    `..data` a symlink to that directory, each key a symlink through `..data`.
    An update writes a new directory, swaps `..data` by an atomic rename, and
    removes the old directory."""

    def __init__(self, directory: Path, name: str, value: str) -> None:
        self.directory = directory
        self.name = name
        self.versions = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._current = self._write_version(value)
        os.symlink(self._current, directory / "..data")
        os.symlink(Path("..data") / name, directory / name)

    @property
    def path(self) -> str:
        return str(self.directory / self.name)

    def update(self, value: str) -> None:
        old, self._current = self._current, self._write_version(value)
        os.symlink(self._current, self.directory / "..data_tmp")
        os.replace(self.directory / "..data_tmp", self.directory / "..data")
        (self.directory / old / self.name).unlink()
        (self.directory / old).rmdir()

    def _write_version(self, value: str) -> str:
        self.versions += 1
        version = f"..2025_01_01_00_00_{self.versions:02d}.000000001"
        (self.directory / version).mkdir()
        (self.directory / version / self.name).write_text(value + "\n")
        return version


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
