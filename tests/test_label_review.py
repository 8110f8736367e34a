"""Label review (issue 16): the engine finds flipped labels, the backbone it chooses, the
label-noise copies, ``hotdog review-local``, and the review jobs' endpoints in process (the
worker side runs through a real stack in tests/test_service.py).

What the precision test proves, and what it does not: its two classes differ in colour, so
even a randomly initialised ResNet-18 (seeded; no ImageNet weights on a test machine) gives
embeddings a linear classifier separates. It shows that the pipeline (one embedding per
image, out-of-sample probabilities from k-fold logistic regression, cleanlab's ranking)
puts flipped labels first when the embeddings separate the classes; how well a given
backbone separates real photos is what bench/label_review.py measures (README).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.core.config import Settings
from app.datasets.label_noise import flip_labels, relabelled_copy
from app.engine import TrainConfig, fit, load_checkpoint, save_checkpoint
from app.engine.catalogue import catalogue
from app.engine.data import load_image_folder
from app.engine.review import (
    FINE_TUNED,
    ReviewConfig,
    choose_backbone,
    precision_recall_at,
    review_labels,
)
from tests.helpers import TINY, migrated, upload, write_color_dataset, zip_tree

ISSUE_FIELDS = {"image_id", "split", "label", "path", "suggested", "confidence", "rank"}
OUTLIER_FIELDS = {"image_id", "split", "label", "path", "score"}


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """40 training images per class, 10 % of the 80 labels flipped (seeded): the clean set,
    the noisy copy, and each flipped image's path in the copy with its true class."""
    tmp = tmp_path_factory.mktemp("noise")
    clean = write_color_dataset(tmp / "clean", train=40, test=2, sizes=(32, 40))
    truth = flip_labels(clean, tmp / "noisy", fraction=0.1, seed=0)
    return clean, tmp / "noisy", truth


def test_flipped_labels_come_first(noisy: tuple[Path, Path, dict[str, str]]) -> None:
    _clean, data, truth = noisy
    backbone = choose_backbone(start="scratch", image_size=32, seed=0)
    assert backbone.description == "scratch (random weights, seed 0)"
    review = review_labels(data, backbone, ReviewConfig(seed=0))
    entries = catalogue(data)
    flipped = {e.id for e in entries if e.path in truth}
    assert len(flipped) == 8 and review.images == 80
    precision, recall = precision_recall_at(review.ranking, flipped)
    assert precision >= 0.7 and recall == precision  # k = the number flipped
    # Every issue names its image by id and path, with its given and suggested class.
    assert review.issues and [i.rank for i in review.issues] == list(
        range(1, len(review.issues) + 1))
    for issue in review.issues:
        entry = entries[issue.image_id]
        assert (issue.split, issue.label, issue.path) == ("train", entry.label, entry.path)
        assert issue.suggested != issue.label and 0.5 <= issue.confidence <= 1
    for issue in review.issues:  # a flipped image is suggested back into its true class
        if issue.path in truth:
            assert issue.suggested == truth[issue.path]
    as_json = review.to_dict()
    assert set(as_json) == {"backbone", "issues", "outliers"}
    assert all(set(i) == ISSUE_FIELDS for i in as_json["issues"])
    assert all(set(o) == OUTLIER_FIELDS for o in as_json["outliers"])
    assert [o["score"] for o in as_json["outliers"]] == sorted(
        o["score"] for o in as_json["outliers"])
    # The same seed, the same review.
    again = review_labels(data, backbone, ReviewConfig(seed=0))
    assert again.ranking == review.ranking


def test_label_noise_copies_leave_the_source_untouched(
        noisy: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    clean, data, truth = noisy
    before = {p: p.read_bytes() for p in clean.rglob("*") if p.is_file()}
    assert load_image_folder(data).counts()["train"] != load_image_folder(clean).counts()[
        "train"] or len(truth) % 2 == 0
    assert all(path.split("/")[1] != cls for path, cls in truth.items())  # really flipped
    fixed = tmp_path / "fixed"
    moved = relabelled_copy(data, fixed, truth)  # every flip undone
    assert set(moved.values()) != set() and len(moved) == len(truth)
    assert load_image_folder(fixed).counts() == load_image_folder(clean).counts()
    assert {p: p.read_bytes() for p in clean.rglob("*") if p.is_file()} == before
    with pytest.raises(FileExistsError):
        flip_labels(clean, data, fraction=0.1)
    with pytest.raises(ValueError, match="unknown class"):
        relabelled_copy(data, tmp_path / "other", {next(iter(truth)): "pizza"})


@pytest.fixture(scope="module")
def scratch_model(tmp_path_factory: pytest.TempPathFactory, color_dataset: Path) -> Path:
    """A model trained from scratch for one epoch (its start: scratch)."""
    out = tmp_path_factory.mktemp("models") / "scratch.pt"
    fit(color_dataset, TrainConfig(**TINY, epochs=1, val_fraction=0), out)
    return out


def test_the_backbone_is_the_start_unless_that_is_scratch(scratch_model: Path,
                                                          tmp_path: Path) -> None:
    assert choose_backbone(scratch_model).description.startswith(
        FINE_TUNED + " (the job started from scratch")
    assert choose_backbone(scratch_model, prefer="start").description.startswith("scratch")
    # A model started from another checkpoint (as its params record it): that checkpoint's
    # backbone, by default.
    child = tmp_path / "child.pt"
    ckpt = load_checkpoint(scratch_model)
    save_checkpoint({**ckpt, "params": {**ckpt["params"], "init": str(scratch_model)}}, child)
    chosen = choose_backbone(child, start_name="job:abc")
    assert chosen.description == "job:abc (the starting backbone)"
    assert chosen.preprocessing.image_size == 32
    assert choose_backbone(child, prefer="fine-tuned").description == FINE_TUNED
    # The model it started from is gone: the fine-tuned backbone, saying so.
    ckpt["params"]["init"] = str(tmp_path / "gone.pt")
    save_checkpoint(ckpt, child)
    assert choose_backbone(child, start_name="job:abc").description == (
        FINE_TUNED + " (the model it started from, job:abc, is gone)")
    with pytest.raises(ValueError, match="needs a checkpoint"):
        choose_backbone(start="imagenet", prefer="fine-tuned")


def test_review_local_lists_the_issues_with_their_paths(
        scratch_model: Path, noisy: tuple[Path, Path, dict[str, str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli.main import main

    _clean, data, truth = noisy
    out = tmp_path / "review.json"
    assert main(["review-local", str(data), "--checkpoint", str(scratch_model), "--out",
                 str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["backbone"].startswith(FINE_TUNED) and shown["summary"]["images"] == 80
    assert json.loads(out.read_text())["issues"] == shown["issues"]
    for issue in shown["issues"]:
        assert (data / issue["path"]).is_file() and issue["path"].split("/")[1] == issue["label"]
    assert main(["review-local", str(data), "--init", "scratch", "--image-size", "32"]) == 0
    text = capsys.readouterr().out
    assert "backbone: scratch (random weights, seed 0)" in text
    assert any(path in text for path in truth)  # the flagged ones by their path
    # Bad input: a class with one training image cannot be cross-validated.
    tiny = write_color_dataset(tmp_path / "tiny", train=1, test=1)
    assert main(["review-local", str(tiny), "--init", "scratch", "--image-size", "32"]) == 3
    assert "at least 2 training images per class" in capsys.readouterr().err


# ---------------------------------------------------------------------- the endpoints
@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated(tmp_path / "data")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def test_review_endpoints_in_process(client: TestClient, settings: Settings,
                                     scratch_model: Path, tmp_path: Path,
                                     color_dataset: Path) -> None:
    """Submitting and reading reviews (no worker here: the jobs stay queued; a real worker
    runs them in tests/test_service.py)."""
    from sqlalchemy.orm import Session

    from app.db.models import JobStatus
    from app.db.session import make_engine
    from app.jobs.service import claim_job, create_job, finish_job

    ds = upload(client, zip_tree(color_dataset)).json()["id"]
    engine = make_engine(settings.db_url)
    with Session(engine) as s:  # a model, as a worker records one
        model = create_job(s, dataset_id=ds, params=TrainConfig(**TINY).to_dict(), epochs=1)
        s.commit()
        claim_job(s, model.id, worker="w", lease_seconds=60)
        finish_job(s, model.id, worker="w", status=JobStatus.SUCCEEDED,
                   checkpoint_path=str(scratch_model))
        s.commit()
        model_id = model.id
    engine.dispose()
    r = client.get(f"/jobs/{model_id}/label-review")
    assert r.status_code == 404 and "no label review" in r.json()["detail"]
    assert client.get(f"/jobs/{'0' * 32}/label-review").status_code == 404
    assert client.post(f"/jobs/{'0' * 32}/review", json={}).status_code == 404
    # No worker is running: refused unless queue_anyway, as every job.
    assert client.post(f"/jobs/{model_id}/review", json={}).status_code == 409
    r = client.post(f"/jobs/{model_id}/review", json={"queue_anyway": True})
    assert r.status_code == 202, r.text
    review = r.json()
    assert review["kind"] == "review" and review["model_id"] == model_id
    assert review["dataset_id"] == ds and review["params"]["init"] == "scratch"
    assert review["params"]["folds"] == settings.review_folds
    r = client.post(f"/jobs/{model_id}/review", json={"queue_anyway": True})
    assert r.status_code == 409 and "already queued or running" in r.json()["detail"]
    # Not a training job / not succeeded: 409.
    assert client.post(f"/jobs/{review['id']}/review", json={}).status_code == 409
    queued = client.post("/jobs", json={"dataset_id": ds, **TINY, "review_labels": True,
                                        "queue_anyway": True}).json()
    assert queued["params"]["review_labels"] is True
    r = client.post(f"/jobs/{queued['id']}/review", json={"queue_anyway": True})
    assert r.status_code == 409 and "only a succeeded training job" in r.json()["detail"]
    # The review as the page reads it, by the training job's id or the review's.
    for job_id in (model_id, review["id"]):
        r = client.get(f"/jobs/{job_id}/label-review")
        assert r.status_code == 200
        assert r.json() == {"job_id": review["id"], "dataset_id": ds, "status": "queued",
                            "backbone": "", "issues": [], "outliers": []}
    # The review is a job like the others: it can be cancelled, and is not a model.
    assert client.post(f"/jobs/{review['id']}/cancel").json()["status"] == "cancelled"
    assert client.get(f"/jobs/{model_id}/label-review").json()["status"] == "cancelled"
    assert review["id"] not in [m["id"] for m in client.get("/models").json()]
