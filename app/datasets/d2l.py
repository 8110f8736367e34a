"""d2l's real hotdog / not-hotdog photos: download, check and unpack ``hotdog.zip``."""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from app.datasets.archive import extract_zip
from app.datasets.layout import SPLITS, find_root, move_into_place, refuse_non_empty

logger = logging.getLogger(__name__)

D2L_HOTDOG_URL = "http://d2l-data.s3-accelerate.amazonaws.com/hotdog.zip"
D2L_HOTDOG_SHA1 = "fba480ffa8aa7e0febbb511d181409f899b9baa5"


def fetch_d2l(
    out: Path | str,
    *,
    url: str = D2L_HOTDOG_URL,
    sha1: str = D2L_HOTDOG_SHA1,
    timeout: float = 60.0,
) -> Path:
    """Download d2l's hotdog.zip, check its SHA-1 and unpack it to ``out/{train,test}/``.

    A single leading folder in the archive (d2l's has ``hotdog/``) is stripped. Raises
    ``ConnectionError`` when the download fails, ``ValueError`` on a checksum mismatch or
    an unsafe or malformed archive, ``FileExistsError`` if ``out`` is not empty.
    """
    out = Path(out)
    refuse_non_empty(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # One private folder holds the download and its extraction; only the tree leaves it.
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        download = work / "download.zip"
        with download.open("wb") as fh:
            actual = _download(url, fh, timeout)
        if actual != sha1.lower():
            raise ValueError(
                f"SHA-1 mismatch for {url}: expected {sha1.lower()}, got {actual}; "
                "the download is corrupt or the file has changed"
            )
        extract_zip(download, work / "zip")
        root = find_root(work / "zip")
        _check_split_layout(root, url)
        move_into_place(root, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("extracted %s to %s", url, out)
    return out


def _download(url: str, fh: BinaryIO, timeout: float) -> str:
    """Stream ``url`` into ``fh``; returns the SHA-1 of what was written."""
    digest = hashlib.sha1()
    request = urllib.request.Request(url, headers={"User-Agent": "hotdog-demo-data"})
    logger.info("downloading %s", url)
    hint = "the machine may be offline; run `hotdog demo-data` for a synthetic dataset instead"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                fh.write(chunk)
    except urllib.error.HTTPError as exc:
        raise ConnectionError(
            f"could not download {url}: HTTP {exc.code} {exc.reason}; "
            "run `hotdog demo-data` for a synthetic dataset instead"
        ) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConnectionError(f"could not download {url} ({reason}); {hint}") from exc
    return digest.hexdigest()


def _check_split_layout(root: Path, source: str) -> None:
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
            raise ValueError(f"{source} does not contain {split}/<class>/ folders")
