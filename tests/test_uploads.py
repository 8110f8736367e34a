"""Uploads under hostile input (issue 14): the zip's central directory is measured before
``zipfile`` reads it, paths are bounded, compression bombs of any size are refused, classes
are capped, storage keeps a reserve (507) and uploads at once are capped (503). Every refusal
leaves nothing in DATA_DIR/datasets. The API runs in process on the embedded default."""

from __future__ import annotations

import io
import logging
import shutil
import socket
import threading
import tracemalloc
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.core.config import Settings
from app.datasets.archive import Limits, extract_zip
from app.engine.errors import DatasetError
from tests.helpers import (
    free_port,
    jpeg,
    make_zip,
    migrated,
    stored_datasets,
    upload,
    wait_for,
    zip_tree,
)

MAX_FILES = 1000


def zip_of(entries: list[tuple[str, bytes]], *, deflate: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def with_images(*entries: tuple[str, bytes]) -> list[tuple[str, bytes]]:
    """``entries`` and a valid two-class tree (a and b) beside them."""
    return [*entries, ("train/b/1.jpg", jpeg(size=40)), ("test/a/1.jpg", jpeg(size=40)),
            ("test/b/1.jpg", jpeg(size=40))]


def many_entries(n: int) -> bytes:
    """A valid zip of ``n`` empty files (zip64 end records beyond 65535 entries)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            zf.writestr(zipfile.ZipInfo(f"train/{i:x}", date_time=(2000, 1, 1, 0, 0, 0)), b"")
    return buf.getvalue()


def claiming_entries(data: bytes, count: int) -> bytes:
    """``data`` with its zip64 end record claiming ``count`` entries: its central directory
    still holds them all (``zipfile`` walks it to its end whatever the count says)."""
    out = bytearray(data)
    at = out.rindex(b"PK\x06\x06")
    for field in (24, 32):  # entries on this disk, entries in all
        out[at + field:at + field + 8] = count.to_bytes(8, "little")
    return bytes(out)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated(tmp_path / "data", max_upload_bytes=64 << 20, max_dataset_files=MAX_FILES)



def refused(client: TestClient, settings: Settings, data: bytes, status: int = 422) -> str:
    r = upload(client, data)
    assert r.status_code == status, r.text
    assert stored_datasets(settings) == []
    detail: str = r.json()["detail"]
    assert str(settings.data_dir) not in detail  # no server paths
    return detail


def peak_memory_of_extraction(zip_path: Path, dest: Path) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError):
            extract_zip(zip_path, dest, Limits(max_bytes=1 << 30, max_files=MAX_FILES))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("claimed", [None, 5], ids=["as it is", "claiming 5 entries"])
def test_a_huge_central_directory_is_refused_before_zipfile_reads_it(
        client: TestClient, settings: Settings, tmp_path: Path, claimed: int | None) -> None:
    # 70,000 entries in 6 MB: zipfile would hold an object per entry (tens of MiB) before
    # the limit could be checked. The end record says how many; a lying one is walked.
    data = many_entries(70_000)
    if claimed is not None:
        data = claiming_entries(data, claimed)
    detail = refused(client, settings, data)
    assert (f"more than {MAX_FILES} entries" if claimed else
            f"70000 entries; the limit is {MAX_FILES}") in detail
    (tmp_path / "big.zip").write_bytes(data)
    assert peak_memory_of_extraction(tmp_path / "big.zip", tmp_path / "out") < 2 << 20


def test_a_central_directory_larger_than_the_entries_need_is_refused(
        client: TestClient, settings: Settings) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in with_images(("train/a/1.jpg", jpeg(size=40))):
            info = zipfile.ZipInfo(name)
            info.comment = b"c" * 0xFFFF  # kept in the central directory
            zf.writestr(info, data)
    small = settings.model_copy(update={"max_dataset_files": 10})
    with TestClient(create_app(small)) as c:
        assert "central directory is" in refused(c, small, buf.getvalue())


CRAFTED = {
    "file, then a folder of its name": (
        with_images(("train/a", b"x"), ("train/a/1.jpg", jpeg(size=40))),
        "zip entry 'train/a' is a file, but entry 'train/a/1.jpg' needs a folder"),
    "folder, then a file of its name": (
        with_images(("train/a/1.jpg", jpeg(size=40)), ("train/a", b"x")),
        "zip entry 'train/a' is a file, but entry 'train/a/1.jpg' needs a folder"),
    "256-byte name": (with_images((f"train/{'n' * 256}/1.jpg", jpeg(size=40))),
                      "is 256 bytes; the limit is 255"),
    "1025-byte path": (with_images(("train/a/" + "d/" * 506 + "x.jpg", jpeg(size=40))),
                       "its path is 1025 bytes; the limit is 1024"),
    "17 levels": (with_images(("train/a/" + "d/" * 14 + "x.jpg", jpeg(size=40))),
                  "is 17 levels deep; the limit is 16"),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_paths_are_422_naming_the_entry(client: TestClient, settings: Settings,
                                                case: str) -> None:
    entries, expected = CRAFTED[case]
    assert expected in refused(client, settings, zip_of(entries))


def test_a_member_of_exactly_8_mib_of_zeros_is_a_bomb(client: TestClient,
                                                       settings: Settings) -> None:
    # Members up to 8 MiB used to skip the ratio check: 8 of them in a 66 KB zip wrote 64 MiB.
    data = zip_of(with_images(("train/a/1.jpg", jpeg(size=40)),
                              ("train/a/z.bmp", b"\0" * (8 << 20))), deflate=True)
    detail = refused(client, settings, data)
    assert "zip entry 'train/a/z.bmp' expands" in detail and "compression bomb" in detail


def test_classes_over_the_limit_are_refused(settings: Settings, tmp_path: Path) -> None:
    entries = [(f"{split}/c{i}/1.jpg", jpeg(size=40))
               for split in ("train", "test") for i in range(4)]
    capped = settings.model_copy(update={"max_classes": 3})
    with TestClient(create_app(capped)) as c:
        assert "4 classes; the limit is 3" in refused(c, capped, zip_of(entries))
    with TestClient(create_app(settings)) as c:
        assert upload(c, zip_of(entries)).status_code == 201  # the same set, under the limit


@pytest.mark.parametrize("top", ["", "hotdog/"])
def test_classes_are_counted_from_the_names_before_anything_is_written(
        tmp_path: Path, top: str) -> None:
    entries = [(f"{top}{split}/c{i}/1.jpg", jpeg(size=40))
               for split in ("train", "test")
               for i in range(4)]
    dest = tmp_path / "out"
    limits = Limits(max_bytes=1 << 30, max_files=100, max_classes=3)
    with pytest.raises(DatasetError, match="4 classes; the limit is 3"):
        extract_zip(io.BytesIO(zip_of(entries)), dest, limits)
    assert not dest.exists()  # not one file extracted: thousands of classes cost no disk
    extract_zip(io.BytesIO(zip_of(entries)), dest,
                Limits(max_bytes=1 << 30, max_files=100, max_classes=4))


def test_an_upload_that_would_eat_into_the_free_space_reserve_is_507(
        settings: Settings, color_dataset: Path) -> None:
    free = shutil.disk_usage(settings.data_dir).free
    reserve = settings.model_copy(update={"min_free_disk_bytes": free + (1 << 40)})
    with TestClient(create_app(reserve)) as c:
        detail = refused(c, reserve, zip_tree(color_dataset), status=507)
    assert "not enough free storage" in detail


# ----------------------------------------------------------- uploads at once, on a server

@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` on a real uvicorn server in a thread of this process."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=60, what="the API to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def _answer(sock: socket.socket) -> bytes:
    return b"".join(iter(lambda: sock.recv(1 << 16), b""))


def multipart_post(port: str, data: bytes) -> tuple[bytes, bytes]:
    """A raw ``POST /datasets`` of ``data``: its head and its body."""
    boundary = "hotdog-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"set.zip\"\r\nContent-Type: application/zip\r\n\r\n").encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /datasets HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head, body


def test_uploads_beyond_the_limit_are_503_at_once(settings: Settings,
                                                  color_dataset: Path) -> None:
    one = settings.model_copy(update={"max_concurrent_uploads": 1})
    with serving(create_app(one)) as url:
        port = url.rsplit(":", 1)[1]
        head, body = multipart_post(port, zip_tree(color_dataset))
        probe = {"file": ("x.zip", b"not a zip", "application/zip")}
        with socket.create_connection(("127.0.0.1", int(port)), timeout=60) as slow:
            slow.sendall(head + body[:len(body) // 2])  # and the rest later: it is uploading

            def busy() -> httpx.Response | None:
                r = httpx.post(url + "/datasets", files=probe, timeout=30)
                return r if r.status_code == 503 else None

            r = wait_for(busy, timeout=30, what="POST /datasets to answer 503")
            assert r.headers["retry-after"] == "1" and "retry shortly" in r.json()["detail"]
            slow.sendall(body[len(body) // 2:])
            answer = _answer(slow)
        assert answer.startswith(b"HTTP/1.1 201"), answer[:500]
        # The slot is free again: the next upload is read (and refused for what it is).
        assert httpx.post(url + "/datasets", files=probe, timeout=30).status_code == 422
    assert len(stored_datasets(settings)) == 1


def test_a_stalled_body_is_408_and_frees_what_it_held(settings: Settings,
                                                      color_dataset: Path) -> None:
    # A client that declares a body and stops sending would hold the only upload slot (and
    # /predict's intake) for as long as it kept the socket: now it gets 408 and is closed.
    one = settings.model_copy(update={"max_concurrent_uploads": 1,
                                      "request_body_idle_seconds": 1.0})
    with serving(create_app(one)) as url:
        port = url.rsplit(":", 1)[1]
        head, body = multipart_post(port, zip_tree(color_dataset))
        with socket.create_connection(("127.0.0.1", int(port)), timeout=30) as stalled, \
                socket.create_connection(("127.0.0.1", int(port)), timeout=30) as photo:
            stalled.sendall(head + body[:len(body) // 2])
            photo.sendall(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          f"Content-Type: image/jpeg\r\nContent-Length: 99999\r\n\r\n"
                          .encode() + jpeg())
            for sock, what, sent in ((stalled, "/datasets", len(body) // 2),
                                     (photo, "/predict", len(jpeg()))):
                answer = _answer(sock)  # the server closes the connection after it
                assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
                assert (f"the request body stalled: no bytes for 1 s after {sent} bytes "
                        f"of POST {what}").encode() in answer, answer
        assert stored_datasets(settings) == []  # nothing half-written
        # The slot is free: a whole upload that keeps sending is taken.
        r = httpx.post(url + "/datasets",
                       files={"file": ("set.zip", zip_tree(color_dataset), "application/zip")},
                       timeout=60)
        assert r.status_code == 201, r.text
        metrics = httpx.get(url + "/metrics", timeout=30).text
        assert 'route="/predict",status="408"' in metrics and 'status="500"' not in metrics


def test_a_client_gone_before_its_body_is_in_is_no_server_error(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    # Starlette raises ClientDisconnect while the body is read: it was logged as an unhandled
    # error (a traceback, twice) and counted as a 500.
    caplog.set_level(logging.INFO, logger="app.api")
    with serving(create_app(settings)) as url:
        port = url.rsplit(":", 1)[1]
        with socket.create_connection(("127.0.0.1", int(port)), timeout=30) as gone:
            gone.sendall(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                         f"Content-Type: image/jpeg\r\nContent-Length: 99999\r\n\r\n"
                         .encode() + jpeg())

        def counted() -> str | None:
            m = httpx.get(url + "/metrics", timeout=30).text
            return m if 'route="/predict",status="499"' in m else None

        metrics = wait_for(counted, timeout=30, what="the closed request to be counted")
        assert 'status="500"' not in metrics
    assert not [r for r in caplog.records if r.levelno >= 40], caplog.text
    assert "client went away during POST /predict" in caplog.text


def test_stored_images_keep_their_uploaded_paths_and_ids_in_imagefolder_order(
        client: TestClient, settings: Settings) -> None:
    from app.engine.catalogue import catalogue

    entries = {f"photos/{split}/{cls}/IMG {n}.JPG": jpeg((40 * n, 100, 30 if cls == "a" else 200))
               for split in ("train", "test") for cls in ("b", "a") for n in (2, 1)}
    r = upload(client, make_zip(entries))
    assert r.status_code == 201, r.text
    listed = catalogue(settings.data_dir / "datasets" / r.json()["id"])
    assert [e.id for e in listed] == list(range(8))
    assert [(e.split, e.label, e.uploaded) for e in listed] == [
        (s, c, f"photos/{s}/{c}/IMG {n}.JPG")
        for s in ("train", "test") for c in ("a", "b") for n in (1, 2)]
    assert listed[0].path == "train/a/000000.jpg"
    assert listed[0].as_dict() == {"image_id": 0, "split": "train", "label": "a",
                                   "path": "photos/train/a/IMG 1.JPG"}
