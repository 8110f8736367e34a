"""Synthetic demo dataset, zipping it, and fetching d2l's hotdog archive (served locally)."""

from __future__ import annotations

import filecmp
import functools
import hashlib
import http.server
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from app.datasets.archive import zip_dataset
from app.datasets.d2l import fetch_d2l
from app.datasets.synthetic import generate_demo_dataset

SMALL = {"train_per_class": 4, "test_per_class": 2, "min_side": 48, "max_side": 96}
CLASSES = ("hotdog", "not-hotdog")
COUNTS = {"train": 4, "test": 2}
TOTAL = 2 * (4 + 2)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    out = tmp_path_factory.mktemp("gen") / "demo"
    calls: list[tuple[int, int]] = []
    summary = generate_demo_dataset(
        out, seed=0, progress=lambda done, total: calls.append((done, total)), **SMALL
    )
    return out, summary, calls


# --------------------------------------------------------------------------- generation


def test_layout_counts_and_summary(generated: tuple[Path, dict, list]) -> None:
    out, summary, _ = generated
    for split, n in COUNTS.items():
        assert sorted(p.name for p in (out / split).iterdir()) == list(CLASSES)
        for cls in CLASSES:
            names = sorted(p.name for p in (out / split / cls).iterdir())
            assert names == [f"{i:04d}.jpg" for i in range(n)]
    assert summary == {
        "path": str(out),
        "classes": list(CLASSES),
        "counts": {split: dict.fromkeys(CLASSES, n) for split, n in COUNTS.items()},
    }
    # The temporary build folder was renamed into place, not left behind, and is not private.
    assert [p.name for p in out.parent.iterdir()] == ["demo"]
    assert out.stat().st_mode & 0o055 == 0o055


def test_images_are_rgb_jpegs_of_varied_sizes(generated: tuple[Path, dict, list]) -> None:
    out, _, _ = generated
    sizes = set()
    files = sorted(out.rglob("*.jpg"))
    assert len(files) == TOTAL
    for path in files:
        with Image.open(path) as im:
            assert im.format == "JPEG"
            assert im.mode == "RGB"
            im.load()
            w, h = im.size
        assert 48 <= w <= 96 and 48 <= h <= 96
        sizes.add((w, h))
    assert len(sizes) >= 4
    assert len({w / h for w, h in sizes}) >= 3


def test_progress_reaches_total(generated: tuple[Path, dict, list]) -> None:
    _, _, calls = generated
    assert calls == [(done, TOTAL) for done in range(1, TOTAL + 1)]


def test_same_seed_same_bytes_other_seed_differs(
    generated: tuple[Path, dict, list], tmp_path: Path
) -> None:
    out, _, _ = generated
    again = tmp_path / "again"
    generate_demo_dataset(again, seed=0, **SMALL)
    assert _tree(again) == _tree(out)

    other = tmp_path / "other"
    generate_demo_dataset(other, seed=1, **SMALL)
    a, b = _tree(out), _tree(other)
    assert a.keys() == b.keys()
    assert all(a[name] != b[name] for name in a)


def test_changing_counts_keeps_earlier_images(
    generated: tuple[Path, dict, list], tmp_path: Path
) -> None:
    out, _, _ = generated
    fewer = tmp_path / "fewer"
    generate_demo_dataset(fewer, seed=0, **{**SMALL, "train_per_class": 2, "test_per_class": 1})
    small, full = _tree(fewer), _tree(out)
    assert len(small) == 2 * (2 + 1)
    assert all(full[name] == data for name, data in small.items())


def test_refuses_non_empty_out_and_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        generate_demo_dataset(out, **SMALL)
    assert _tree(out) == {"keep.txt": b"mine"}
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError):
        generate_demo_dataset(a_file, **SMALL)


def test_empty_existing_out_is_used(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    generate_demo_dataset(out, **{**SMALL, "train_per_class": 1, "test_per_class": 1})
    assert len(list(out.rglob("*.jpg"))) == 4


def test_crash_leaves_no_half_dataset(tmp_path: Path) -> None:
    out = tmp_path / "demo"

    def explode(done: int, total: int) -> None:
        if done == 3:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        generate_demo_dataset(out, progress=explode, **SMALL)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- zip


def test_zip_has_splits_at_root_and_round_trips(
    generated: tuple[Path, dict, list], tmp_path: Path
) -> None:
    src, _, _ = generated
    zip_path = zip_dataset(src, tmp_path / "out" / "demo.zip")
    assert zip_path == tmp_path / "out" / "demo.zip"
    assert [p.name for p in zip_path.parent.iterdir()] == ["demo.zip"]
    assert zip_path.stat().st_mode & 0o044 == 0o044
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        assert names
        assert all(n.startswith(("train/", "test/")) for n in names)
        zf.extractall(tmp_path / "unzipped")
    assert _tree(tmp_path / "unzipped") == _tree(src)
    cmp = filecmp.dircmp(tmp_path / "unzipped", src)
    assert not cmp.left_only and not cmp.right_only


# --------------------------------------------------------------------------- fetch_d2l


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1: (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


D2L_LIKE = {
    "hotdog/": b"",
    "hotdog/train/hotdog/0.png": b"train hotdog",
    "hotdog/train/not-hotdog/0.png": b"train other",
    "hotdog/test/hotdog/1.png": b"test hotdog",
    "hotdog/test/not-hotdog/1.png": b"test other",
    "__MACOSX/hotdog/._0.png": b"resource fork",
}


def _write_zip(path: Path, entries: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fetch_d2l_extracts_without_leading_folder(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    root, base = served
    sha1 = _write_zip(root / "hotdog.zip", D2L_LIKE)
    out = tmp_path / "data" / "hotdog"
    assert fetch_d2l(out, url=f"{base}/hotdog.zip", sha1=sha1.upper(), timeout=10) == out
    assert _tree(out) == {
        "train/hotdog/0.png": b"train hotdog",
        "train/not-hotdog/0.png": b"train other",
        "test/hotdog/1.png": b"test hotdog",
        "test/not-hotdog/1.png": b"test other",
    }
    assert [p.name for p in out.parent.iterdir()] == ["hotdog"]


def test_fetch_d2l_checksum_mismatch(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base = served
    actual = _write_zip(root / "hotdog.zip", D2L_LIKE)
    out = tmp_path / "data" / "hotdog"
    wrong = "0" * 40
    with pytest.raises(ValueError, match="SHA-1") as info:
        fetch_d2l(out, url=f"{base}/hotdog.zip", sha1=wrong, timeout=10)
    assert wrong in str(info.value) and actual in str(info.value)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_fetch_d2l_unreachable_is_connection_error(tmp_path: Path) -> None:
    out = tmp_path / "hotdog"
    url = f"http://127.0.0.1:{_closed_port()}/x.zip"
    with pytest.raises(ConnectionError, match="offline") as info:
        fetch_d2l(out, url=url, timeout=5)
    assert "hotdog demo-data" in str(info.value)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_fetch_d2l_http_error_is_connection_error(served: tuple[Path, str], tmp_path: Path) -> None:
    _, base = served
    data = tmp_path / "data"
    with pytest.raises(ConnectionError, match="404"):
        fetch_d2l(data / "hotdog", url=f"{base}/missing.zip", timeout=10)
    assert list(data.iterdir()) == []


@pytest.mark.parametrize(
    "evil",
    [
        "hotdog/../../evil.txt",
        "/tmp/evil.txt",
        "hotdog\\..\\evil.txt",
        "C:/evil.txt",
        "hotdog/train/evil\x07.txt",
        # Skipped folders are checked too: a name that is skipped is still refused if unsafe.
        "__MACOSX/../../evil.txt",
    ],
)
def test_fetch_d2l_rejects_unsafe_entries(
    served: tuple[Path, str], tmp_path: Path, evil: str
) -> None:
    root, base = served
    sha1 = _write_zip(root / "hotdog.zip", {**D2L_LIKE, evil: b"pwned"})
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    out = work / "hotdog"
    with pytest.raises(ValueError, match="unsafe"):
        fetch_d2l(out, url=f"{base}/hotdog.zip", sha1=sha1, timeout=10)
    assert not out.exists()
    assert list(work.iterdir()) == []
    assert not list(tmp_path.rglob("evil.txt"))
    assert not Path("/tmp/evil.txt").exists() or Path("/tmp/evil.txt").read_bytes() != b"pwned"


def test_fetch_d2l_archive_without_splits(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base = served
    sha1 = _write_zip(root / "hotdog.zip", {"hotdog/images/a.png": b"a"})
    out = tmp_path / "data" / "hotdog"
    with pytest.raises(ValueError, match="train"):
        fetch_d2l(out, url=f"{base}/hotdog.zip", sha1=sha1, timeout=10)
    assert list(out.parent.iterdir()) == []


def test_fetch_d2l_refuses_non_empty_out_before_downloading(tmp_path: Path) -> None:
    out = tmp_path / "hotdog"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # The URL is unreachable: a FileExistsError shows the refusal came first.
    with pytest.raises(FileExistsError):
        fetch_d2l(out, url=f"http://127.0.0.1:{_closed_port()}/x.zip", timeout=5)
    assert _tree(out) == {"keep.txt": b"mine"}
