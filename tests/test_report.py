"""The dataset report (duplicates, leakage, image issues; no model), relabelled versions,
thumbnails and the endpoints in process. Through a real stack: tests/test_service.py."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFilter

from app.core.config import Settings
from app.datasets.report import NEAR_DUPLICATE_BITS, build_report
from app.datasets.synthetic.foods import FOODS
from app.datasets.synthetic.render import render_demo_image, render_food_image
from app.engine.catalogue import catalogue
from tests.helpers import migrated, upload, wait_for, write_color_dataset, zip_tree

DISTINCT = 200


def _photo(i: int) -> Image.Image:
    """Distinct synthetic photos, as varied as the generator makes them: hotdogs, other
    dishes, empty tables, every food, sizes 48..160 px a side."""
    rng = np.random.default_rng([2026, i])
    foods = sorted(FOODS)
    if i % 4 == 0:
        return render_demo_image(rng, hotdog=bool(i % 8), min_side=48, max_side=160)
    return render_food_image(rng, foods[i % len(foods)], min_side=48, max_side=160)


def _altered(img: Image.Image, crop: float, scale: float, quality: int) -> Image.Image:
    """A scraper's copy: cropped by ``crop`` of the short side at each edge, resized by
    ``scale``, re-encoded as a JPEG of ``quality``."""
    w, h = img.size
    c = int(min(w, h) * crop)
    out = img.crop((c, c, w - c, h - c))
    out = out.resize((round(out.width * scale), round(out.height * scale)))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


ALTERATIONS = [(0.03, 0.7, 70), (0.02, 1.3, 85), (0.0, 0.5, 60), (0.04, 1.0, 90),
               (0.02, 0.8, 50)]


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 distinct photos (150 train, 50 test, two classes), 5 test photos copied into
    train (altered), one train photo stored twice (same pixels, one under the other class),
    and one image of each issue."""
    root = tmp_path_factory.mktemp("leaky")
    classes = ("a", "b")
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
    for i in range(DISTINCT):
        split = "train" if i < 150 else "test"
        _photo(i).save(root / split / classes[i % 2] / f"p{i:03d}.jpg", quality=90)
    for k, (crop, scale, q) in enumerate(ALTERATIONS):
        i = 150 + k  # test photos
        with Image.open(root / "test" / classes[i % 2] / f"p{i:03d}.jpg") as img:
            copy = _altered(img.convert("RGB"), crop, scale, q)
        copy.save(root / "train" / classes[i % 2] / f"copy{k}.jpg", quality=95)
    with Image.open(root / "train/a/p000.jpg") as img:  # the same pixels, lossless
        img.convert("RGB").save(root / "train/b/same-as-p000.png")
    rng = np.random.default_rng(5)

    def noise(w: int, h: int) -> Image.Image:  # a different picture each time
        return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))

    noise(20, 20).save(root / "train/a/tiny.png")
    noise(300, 60).save(root / "train/a/wide.png")
    Image.new("RGB", (80, 80), (12, 10, 14)).save(root / "train/b/dark.png")
    noise(120, 120).convert("L").convert("RGB").save(root / "train/b/grey.png")
    _photo(999).resize((160, 160)).filter(ImageFilter.GaussianBlur(4)).save(
        root / "train/a/blurry.png")
    return root


def _paths(group: dict) -> set[str]:
    return {img["path"] for img in group["images"]}


def test_leakage_copies_are_found_and_distinct_photos_are_not_paired(leaky: Path) -> None:
    report = build_report(leaky, threads=2)
    groups = report["groups"]
    leakage = [g for g in groups if g["scope"] == "leakage"]
    expected = {frozenset({f"test/{'ab'[(150 + k) % 2]}/p{150 + k:03d}.jpg",
                           f"train/{'ab'[(150 + k) % 2]}/copy{k}.jpg"})
                for k in range(len(ALTERATIONS))}
    assert {frozenset(_paths(g)) for g in leakage} == expected
    assert all(g["kind"] == "near" and g["max_distance"] <= NEAR_DUPLICATE_BITS
               for g in leakage)
    # Besides the planted pairs, one exact pair: the same photo under two classes.
    others = [g for g in groups if g["scope"] != "leakage"]
    assert len(others) == 1, others
    (exact,) = others
    assert exact["kind"] == "exact" and exact["scope"] == "train"
    assert _paths(exact) == {"train/a/p000.jpg", "train/b/same-as-p000.png"}
    assert exact["label_conflict"] and exact["labels"] == ["a", "b"]
    s = report["summary"]
    assert s["leakage_groups"] == 5 and s["leaked_images"] == 5 and s["label_conflicts"] == 1
    assert s["exact_groups"] == {"train": 1} and s["near_groups"] == {"leakage": 5}


def test_image_issues_counts_and_ids(leaky: Path) -> None:
    report = build_report(leaky, threads=1)
    entries = {e.id: e for e in catalogue(leaky)}
    flagged = {i["path"].split("/")[-1]: set(i["issues"]) for i in report["image_issues"]}
    assert flagged["tiny.png"] >= {"tiny"}
    assert flagged["wide.png"] >= {"aspect_ratio"}
    assert flagged["dark.png"] >= {"dark", "uniform"}
    assert flagged["grey.png"] >= {"grayscale"}
    assert flagged["blurry.png"] >= {"blurry"}
    # The distinct photos (sides 48..160 px) are flagged for their shape only, and all
    # those more than twice as long as wide are.
    distinct = {n for n in flagged if n.startswith("p")}
    assert all(flagged[n] == {"aspect_ratio"} for n in distinct), flagged
    oblong = set()
    for path in leaky.rglob("p*.jpg"):
        with Image.open(path) as img:
            if max(img.size) > 2 * min(img.size):
                oblong.add(path.name)
    assert distinct == oblong
    for item in report["image_issues"]:  # every image: id, split, class, uploaded path
        e = entries[item["image_id"]]
        assert (item["split"], item["label"], item["path"]) == (e.split, e.label, e.uploaded)
    counts = report["counts"]
    assert counts["test"] == {"a": 25, "b": 25}
    assert sum(counts["train"].values()) == 150 + 5 + 1 + 5
    assert report["summary"]["imbalance"]["test"] == 1.0


# ---------------------------------------------------------------- the API in process

@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated(tmp_path / "data", report_threads=1)


def _ready(client: TestClient, dataset_id: str) -> dict:
    def done() -> dict | None:
        r = client.get(f"/datasets/{dataset_id}/report")
        return r.json() if r.status_code == 200 else None
    return wait_for(done, timeout=60, interval=0.1, what=f"dataset {dataset_id}'s report")


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def stored(client: TestClient, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    src = write_color_dataset(tmp_path / "src", train=4, test=2)
    (src / "test" / "hotdog" / "leak.jpg").write_bytes(
        (src / "train" / "hotdog" / "000.jpg").read_bytes())
    r = upload(client, zip_tree(src, "myset/"))
    assert r.status_code == 201, r.text
    assert r.json()["report_status"] in ("pending", "running", "ready")
    yield r.json()["id"], src


def test_report_endpoint_and_thumbnails(client: TestClient, stored: tuple[str, Path]) -> None:
    dataset_id, _ = stored
    body = _ready(client, dataset_id)
    assert body["status"] == "ready" and body["error"] is None
    (group,) = [g for g in body["report"]["groups"] if g["scope"] == "leakage"]
    assert group["kind"] == "exact"
    assert {i["path"] for i in group["images"]} == {"myset/train/hotdog/000.jpg",
                                                     "myset/test/hotdog/leak.jpg"}
    assert client.get(f"/datasets/{dataset_id}").json()["report_status"] == "ready"

    image_id = group["images"][0]["image_id"]
    r = client.get(f"/datasets/{dataset_id}/images/{image_id}?size=32")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) <= 32
    assert client.get(f"/datasets/{dataset_id}/images/999").status_code == 404
    assert "no image 999" in client.get(f"/datasets/{dataset_id}/images/999").json()["detail"]
    for size in (8, 4096):
        assert client.get(f"/datasets/{dataset_id}/images/0?size={size}").status_code == 422
    assert client.get("/datasets/nope/report").status_code == 404


def test_relabel_makes_a_new_version_and_leaves_the_old_one(
        client: TestClient, settings: Settings, stored: tuple[str, Path]) -> None:
    dataset_id, _ = stored
    _ready(client, dataset_id)
    old_dir = settings.dataset_dir(dataset_id)
    before = _files(old_dir)
    old_row = client.get(f"/datasets/{dataset_id}").json()
    entries = catalogue(old_dir)
    hot = [e for e in entries if e.split == "train" and e.label == "hotdog"]
    moved, dropped = hot[0], hot[1]

    for body, words in [
        ({"changes": {}}, "no changes"),
        ({"changes": {"9999": "drop"}}, "unknown image id"),
        ({"changes": {"x": "drop"}}, "unknown image id"),
        ({"changes": {str(moved.id): "pizza"}}, "unknown class"),
        ({"changes": {str(moved.id): "hotdog"}}, "nothing to change"),
        ({"changes": {str(e.id): "drop" for e in hot}}, "no training images would be left"),
    ]:
        r = client.post(f"/datasets/{dataset_id}/relabel", json=body)
        assert r.status_code == 422, (body, r.text)
        assert words in str(r.json()["detail"]), r.text

    r = client.post(f"/datasets/{dataset_id}/relabel",  # the bare mapping is taken too
                    json={str(moved.id): "not-hotdog", str(dropped.id): "drop"})
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["id"] != dataset_id and new["parent_id"] == dataset_id
    assert new["changes"] == {str(moved.id): "not-hotdog", str(dropped.id): "drop"}
    assert new["counts"]["train"] == {"hotdog": 2, "not-hotdog": 5}
    assert new["counts"]["test"] == old_row["counts"]["test"]

    assert _files(old_dir) == before  # the old version: files and row untouched
    assert client.get(f"/datasets/{dataset_id}").json() == old_row
    new_entries = catalogue(settings.dataset_dir(new["id"]))
    assert len(new_entries) == len(entries) - 1
    relabelled = [e for e in new_entries if e.uploaded == moved.uploaded]
    assert [(e.split, e.label) for e in relabelled] == [("train", "not-hotdog")]
    assert dropped.uploaded not in {e.uploaded for e in new_entries}
    report = _ready(client, new["id"])["report"]  # the new version has its own report
    assert report["dataset_id"] == new["id"]
    assert report["summary"]["images"] == len(new_entries)

    assert client.post("/datasets/nope/relabel",
                       json={"changes": {"0": "drop"}}).status_code == 404


def test_a_report_left_running_by_a_dead_process_is_taken_up_again(
        settings: Settings, tmp_path: Path) -> None:
    """A restart (a new app on the same database) recomputes a report left 'running' with
    an old heartbeat, and fails one that was interrupted REPORT_MAX_ATTEMPTS times."""
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update
    from sqlalchemy.orm import Session

    from app.api.app import create_app
    from app.db.models import Dataset, ReportStatus
    from app.db.session import make_engine

    src = write_color_dataset(tmp_path / "src", train=2, test=1)
    with TestClient(create_app(settings)) as client:
        ids = [upload(client, zip_tree(src)).json()["id"] for _ in range(2)]
        for i in ids:
            _ready(client, i)
    engine = make_engine(settings.db_url)
    long_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    with Session(engine) as s:  # as a process killed while computing them leaves them
        s.execute(update(Dataset).values(report_status=ReportStatus.RUNNING,
                                         report_heartbeat_at=long_ago))
        s.execute(update(Dataset).where(Dataset.id == ids[1])
                  .values(report_attempts=settings.report_max_attempts))
        s.commit()
    engine.dispose()
    with TestClient(create_app(settings)) as client:
        assert _ready(client, ids[0])["status"] == "ready"
        failed = _ready(client, ids[1])
        assert failed["status"] == "failed" and "interrupted" in failed["error"]
        assert client.get(f"/datasets/{ids[1]}").json()["report_status"] == "failed"


def test_the_relabel_csv_is_read_or_refused_naming_the_line(tmp_path: Path) -> None:
    from app.cli.remote import read_changes

    good = tmp_path / "fixes.csv"
    good.write_text("image_id,new_class\n3, not-hotdog\n\n7,drop\n")
    assert read_changes(good) == {"3": "not-hotdog", "7": "drop"}
    headless = tmp_path / "headless.csv"
    headless.write_text("3,hotdog\n")
    assert read_changes(headless) == {"3": "hotdog"}
    for text, words in [("image_id,new_class\n", "no changes"),
                        ("x,hotdog\n", "line 1"), ("3\n", "line 1"),
                        ("3,hotdog\n3,drop\n", "given twice")]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(ValueError, match=words):
            read_changes(bad)
