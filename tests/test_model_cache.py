"""The models /predict serves: loads bounded per second, and the metric series of a model
removed only once it is evicted and no request uses it (never re-created afterwards)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.api.serving import ModelCache, ServingMetrics, TooManyLoads
from app.core.config import Settings
from app.engine.config import TrainConfig
from app.engine.train import fit
from tests.helpers import TINY, finished_job, migrated, upload, zip_tree


@pytest.fixture(scope="module")
def checkpoints(color_dataset: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("models")
    paths = {}
    for seed in (0, 1):
        paths[f"job{seed}"] = out / f"model-{seed}.pt"
        fit(color_dataset, TrainConfig(**TINY, epochs=1, seed=seed), paths[f"job{seed}"])
    return paths


@pytest.fixture
def metrics() -> ServingMetrics:
    return ServingMetrics(CollectorRegistry())


def cache(metrics: ServingMetrics, *, size: int = 1, loads_per_second: int = 0) -> ModelCache:
    return ModelCache(size=size, device="cpu", precision="fp32", max_batch=4, max_delay=0,
                      max_queue=16, metrics=metrics, runtime="torch",
                      loads_per_second=loads_per_second)


def series(metrics: ServingMetrics) -> set[str]:
    """The models that have hotdog_predictions series."""
    return {s.labels["model"] for family in metrics.predictions.collect()
            for s in family.samples if s.name.endswith("_total")}


def test_an_evicted_model_keeps_its_series_until_its_last_request_ends(
        metrics: ServingMetrics, checkpoints: dict[str, Path]) -> None:
    models = cache(metrics)
    try:
        a = models.get("job0", checkpoints["job0"])
        with models.held(a), models.held(a):  # two requests use it
            models.predicted(a, ["hotdog"])
            b = models.get("job1", checkpoints["job1"])  # evicts it (the cache holds one)
            with models.held(b):
                models.predicted(b, ["hotdog"])
            assert series(metrics) == {"job0", "job1"}
            models.predicted(a, ["hotdog", "not-hotdog"])  # still counted while in use
        assert series(metrics) == {"job1"}  # gone with its last request
        models.predicted(a, ["hotdog"])  # a late request does not bring it back
        with models.held(a):
            models.predicted(a, ["hotdog"])
        assert series(metrics) == {"job1"}

        # Unused when evicted: its series go at once.
        models.get("job0", checkpoints["job0"])
        assert series(metrics) == set()
    finally:
        models.close()


def test_a_model_evicted_before_its_request_holds_it_records_nothing(
        metrics: ServingMetrics, checkpoints: dict[str, Path]) -> None:
    models = cache(metrics)
    try:
        a = models.get("job0", checkpoints["job0"])  # a request got it, then:
        models.get("job1", checkpoints["job1"])  # evicted, unused: forgotten
        with models.held(a):
            models.predicted(a, ["hotdog"])
        assert series(metrics) == set()
    finally:
        models.close()


def test_loads_per_second_are_bounded_and_cached_models_are_not_loads(
        metrics: ServingMetrics, checkpoints: dict[str, Path]) -> None:
    models = cache(metrics, loads_per_second=1)

    def get(job: str) -> str:
        try:
            models.get(job, checkpoints[job])
        except TooManyLoads as exc:
            return str(exc)
        return "loaded"

    try:
        # Both asked for at once: a load taking over a second on a busy machine would
        # otherwise let the second one through (the window counts from a load's start).
        with ThreadPoolExecutor(2) as pool:
            outcome = dict(zip(("job0", "job1"), pool.map(get, ("job0", "job1")), strict=True))
        loaded = [job for job, said in outcome.items() if said == "loaded"]
        refused = [job for job, said in outcome.items() if said != "loaded"]
        assert len(loaded) == 1 and len(refused) == 1, outcome
        assert "MODEL_LOADS_PER_SECOND" in outcome[refused[0]]
        for _ in range(5):
            models.get(loaded[0], checkpoints[loaded[0]])  # in the cache: no load
        time.sleep(1.1)
        models.get(refused[0], checkpoints[refused[0]])
        assert metrics.loads._value.get() == 2
    finally:
        models.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated(tmp_path / "data", models_cached=1, model_loads_per_second=1)


def test_rotating_models_beyond_the_cache_is_refused_with_503(
        client: TestClient, settings: Settings, color_dataset: Path, tmp_path: Path) -> None:
    ds = upload(client, zip_tree(color_dataset)).json()["id"]
    jobs = [finished_job(settings, ds, tmp_path, color_dataset, seed=s) for s in (0, 1)]
    photo = (color_dataset / "test" / "hotdog" / "000.jpg").read_bytes()

    def predict(job: str) -> tuple[int, dict[str, str], dict]:
        r = client.post("/predict", data={"model": job},
                        files=[("file", ("a.jpg", photo, "image/jpeg"))])
        return r.status_code, dict(r.headers), r.json()

    # Both at once, so that the second load is asked for within the second however long
    # the first takes on a busy machine: one is loaded, the other refused.
    with ThreadPoolExecutor(2) as pool:
        answers = dict(zip(jobs, pool.map(predict, jobs), strict=True))
    assert sorted(status for status, _, _ in answers.values()) == [200, 503], answers
    served, refused = sorted(jobs, key=lambda job: answers[job][0])
    _, headers, body = answers[refused]
    assert headers["retry-after"] == "1"
    assert "MODEL_LOADS_PER_SECOND" in body["detail"]
    assert predict(served)[0] == 200  # the loaded one still serves
    time.sleep(1.1)
    assert predict(refused)[0] == 200
