"""The web page in a real headless Chromium against a real running service.

The service is ``hotdog serve`` + ``hotdog worker`` on the embedded default (SQLite and the
file-system broker), as in tests/test_service.py; the browser is Debian's ``chromium`` driven
by its ``chromedriver`` through Selenium. Without them these tests skip (saying how to install
them), except where ``HOTDOG_REQUIRE_BROWSER=1`` (``.ci/run`` sets it): there they fail.

On a failure the page's screenshot, its HTML and the browser console are saved under
``test-artifacts/`` (or ``$HOTDOG_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from app.datasets.label_noise import flip_labels
from tests.helpers import Stack, embedded_stack, wait_for, write_color_dataset

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service as ChromeService
    from selenium.webdriver.chrome.webdriver import WebDriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
except ImportError:  # reported by the `browser` fixture (skip, or fail in CI)
    webdriver = None  # type: ignore[assignment]

CHROMIUM = os.environ.get("HOTDOG_CHROMIUM") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("HOTDOG_CHROMEDRIVER") or "/usr/bin/chromedriver"
INSTALL = "apt-get install -y chromium chromium-driver"
ARTIFACTS = Path(os.environ.get("HOTDOG_TEST_ARTIFACTS")
                 or Path(__file__).resolve().parent.parent / "test-artifacts")
KEY = "page-test-key"
PREDICT_KEY = "page-test-predict-only-key"  # API_KEYS: a key that may only classify
TIMEOUT = 60


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        return f"{' and '.join(missing)} not found; install them with `{INSTALL}`"
    if webdriver is None:
        return "selenium is not installed; run `pip install -e '.[dev]'`"
    return None


# --------------------------------------------------------------------------- the service

@pytest.fixture(scope="session")
def browser_ready() -> None:
    """Skips (or, with HOTDOG_REQUIRE_BROWSER=1, fails) before any service is started."""
    why = browser_missing()
    if why:
        if os.environ.get("HOTDOG_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser tests must run here (HOTDOG_REQUIRE_BROWSER=1): {why}")
        pytest.skip(why)


@pytest.fixture(scope="module")
def service(browser_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with embedded_stack(tmp_path_factory.mktemp("browser")) as stack:
        yield stack


@pytest.fixture(scope="module")
def keyed_service(browser_ready: None, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Stack]:
    """With API_KEY set, and API_KEYS a predict-only key; no worker (jobs stay queued, which
    is all the key tests need)."""
    with embedded_stack(tmp_path_factory.mktemp("browser-keyed"), worker=False,
                        API_KEY=KEY, API_KEYS=f"{PREDICT_KEY}:predict") as stack:
        yield stack


def zip_folder(root: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, str(p.relative_to(root)))
    return out


@pytest.fixture(scope="module")
def trained(service: Stack, color_dataset: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, Any]:
    """A tiny model trained through the API, for /predict."""
    data = zip_folder(color_dataset, tmp_path_factory.mktemp("zip") / "colors.zip")
    dataset, job = train_through_api(service, data, "colors")
    return {"dataset": dataset, "job": job, "zip": data}


def train_through_api(service: Stack, data: Path, name: str
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Upload the zip ``data`` and train a tiny model on it to success: (dataset, job)."""
    with data.open("rb") as f:
        r = httpx.post(f"{service.url}/datasets", files={"file": (data.name, f)},
                       data={"name": name}, timeout=120)
    assert r.status_code == 201, r.text
    dataset = r.json()
    r = httpx.post(f"{service.url}/jobs", timeout=30, json={
        "dataset_id": dataset["id"], "init": "scratch", "image_size": 32, "batch_size": 8,
        "epochs": 3})
    assert r.status_code == 202, r.text
    job = service.wait(r.json()["id"], {"succeeded", "failed", "cancelled"})
    assert job["status"] == "succeeded", job["error"]
    return dataset, job


# --------------------------------------------------------------------------- the browser

@pytest.fixture
def browser(browser_ready: None, request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--no-first-run", "--window-size=1280,1800"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver: Selenium Manager would try to download one (there may be no network).
    driver = webdriver.Chrome(service=ChromeService(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    failed_before = request.session.testsfailed
    try:
        yield driver
    finally:
        # This test's call report is logged by now: a failure of it counts in testsfailed.
        if request.session.testsfailed > failed_before:
            save_artifacts(driver, request.node.name)
        driver.quit()


def save_artifacts(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    stem = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    try:
        driver.save_screenshot(str(stem.with_suffix(".png")))
        stem.with_suffix(".html").write_text(driver.page_source)
        stem.with_suffix(".console.txt").write_text(
            "\n".join(f"{e['level']} {e['message']}" for e in driver.get_log("browser")))
    except Exception as exc:  # a crashed browser: say so, don't hide the test's own failure
        stem.with_suffix(".txt").write_text(f"could not save the page: {exc!r}")
    print(f"\nbrowser artefacts: {stem}.*")


def wait_on_page(driver: WebDriver, what: str, condition: Callable[[WebDriver], Any],
                 timeout: float = TIMEOUT) -> Any:
    """``condition(driver)`` once truthy, looked at every 0.1 s."""
    def safe() -> Any:
        try:
            return condition(driver)
        except StaleElementReferenceException:  # the page redrew it: look again
            return False

    return wait_for(safe, timeout=timeout, interval=0.1, what=what)


def visible_text(driver: WebDriver, element_id: str) -> str:
    el = driver.find_element(By.ID, element_id)
    return el.text.strip() if el.is_displayed() else ""


def assert_no_script_errors(driver: WebDriver) -> None:
    """Nothing but the API's refusals (which the page shows in words) in the console."""
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
              and "Failed to load resource: the server responded with a status of 4"
              not in e["message"]]
    assert not errors, errors


def open_page(driver: WebDriver, stack: Stack) -> None:
    driver.get(stack.url + "/")
    assert driver.title == "hotdog"
    # The first poll of the job list has come back (a table, or "No jobs yet.").
    wait_on_page(driver, "the job list", lambda d: d.find_element(
        By.ID, "jobs-table").is_displayed() or d.find_element(By.ID, "jobs-empty").is_displayed())


def fill(driver: WebDriver, element_id: str, value: str) -> None:
    el = driver.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(value)


def points(driver: WebDriver, chart: str, job_id: str, kind: str = "test") -> int:
    return len(driver.find_elements(
        By.CSS_SELECTOR, f'#{chart} g.series[data-job="{job_id}"][data-kind="{kind}"] circle'))


def row_status(driver: WebDriver, job_id: str) -> str | None:
    rows = driver.find_elements(By.CSS_SELECTOR, f'#jobs-body tr[data-job="{job_id}"]')
    return rows[0].get_attribute("data-status") if rows else None


# The job's row status and its test-accuracy and test-loss dots, read at one instant.
WATCH = """
const id = arguments[0];
const row = document.querySelector(`#jobs-body tr[data-job="${id}"]`);
const dots = (chart) => document.querySelectorAll(
  `#${chart} g.series[data-job="${id}"][data-kind="test"] circle`).length;
return [row ? row.dataset.status : null, dots("chart-acc"), dots("chart-loss")];
"""


def submit_tiny_job(driver: WebDriver, epochs: int, init: str = "scratch") -> str:
    """Fills the job form (32 px, batch 8) for the chosen dataset; the new job's id."""
    before = {r.get_attribute("data-job")
              for r in driver.find_elements(By.CSS_SELECTOR, "#jobs-body tr")}
    Select(driver.find_element(By.ID, "job-init")).select_by_value(init)
    fill(driver, "job-epochs", str(epochs))
    if not driver.find_element(By.CSS_SELECTOR, "#job-form details").get_attribute("open"):
        driver.find_element(By.CSS_SELECTOR, "#job-form details summary").click()
    fill(driver, "job-batch_size", "8")
    fill(driver, "job-image_size", "32")
    driver.find_element(By.ID, "job-submit").click()

    def new_row(d: WebDriver) -> str | None:
        ids = [r.get_attribute("data-job") for r in d.find_elements(By.CSS_SELECTOR,
                                                                    "#jobs-body tr")]
        fresh = [i for i in ids if i not in before]
        return fresh[0] if fresh else None

    return wait_on_page(driver, "the new job in the list", new_row)


def upload_dataset(driver: WebDriver, path: Path, name: str = "") -> None:
    driver.find_element(By.ID, "dataset-file").send_keys(str(path))
    fill(driver, "dataset-name", name)
    driver.find_element(By.ID, "dataset-submit").click()


# --------------------------------------------------------------------------- the tests

def test_a_photo_shows_its_label_and_probabilities(browser: WebDriver, service: Stack,
                                                   trained: dict, color_dataset: Path) -> None:
    open_page(browser, service)
    job_id = trained["job"]["id"]
    wait_on_page(browser, "the trained model in the model list", lambda d: d.find_elements(
        By.CSS_SELECTOR, f'#model-select option[value="{job_id}"]'))
    photo = color_dataset / "test" / "hotdog" / "000.jpg"
    with photo.open("rb") as f:
        r = httpx.post(f"{service.url}/predict", files={"file": (photo.name, f)}, timeout=60)
    expected = r.json()["predictions"][0]

    browser.find_element(By.ID, "photo-input").send_keys(str(photo))
    label = wait_on_page(browser, "the label", lambda d: d.find_elements(
        By.CSS_SELECTOR, "#predict-result .verdict-label"))[0]
    assert label.text == expected["label"]
    assert visible_text(browser, "predict-error") == ""
    card = browser.find_element(By.CSS_SELECTOR, "#predict-result .prediction")
    assert photo.name in card.text
    # The photo itself is shown (decoded by the browser, at its own size).
    img = card.find_element(By.TAG_NAME, "img")
    with Image.open(photo) as original:
        assert browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", img) == original.width
    # One bar per class, the label's first, its length the probability.
    bars = card.find_elements(By.CSS_SELECTOR, "li.bar")
    assert bars[0].get_attribute("data-class") == expected["label"]
    assert {b.get_attribute("data-class") for b in bars} == set(trained["dataset"]["classes"])
    for bar in bars:
        p = expected["probabilities"][bar.get_attribute("data-class")]
        shown = float(bar.find_element(By.CLASS_NAME, "bar-value").text.rstrip(" %")) / 100
        assert shown == pytest.approx(p, abs=0.0006)
        track = bar.find_element(By.CLASS_NAME, "bar-track").size["width"]
        fill_width = bar.find_element(By.CLASS_NAME, "bar-fill").size["width"]
        assert fill_width == pytest.approx(p * track, abs=2)
    assert browser.find_element(By.ID, "predict-result").get_attribute("aria-live") == "polite"
    assert_no_script_errors(browser)


def test_a_zip_of_photos_becomes_a_batch_job_and_a_csv(browser: WebDriver, service: Stack,
                                                       trained: dict, color_dataset: Path,
                                                       tmp_path: Path) -> None:
    photos = tmp_path / "photos.zip"
    with zipfile.ZipFile(photos, "w") as zf:
        for i, photo in enumerate(sorted((color_dataset / "test").rglob("*.jpg"))[:4]):
            zf.write(photo, f"lunch/{i}-{photo.name}")
        zf.writestr("broken.jpg", b"not a photo")
    open_page(browser, service)
    job_id = trained["job"]["id"]
    wait_on_page(browser, "the model in the batch panel", lambda d: d.find_elements(
        By.CSS_SELECTOR, f'#batch-model option[value="{job_id}"]'))
    Select(browser.find_element(By.ID, "batch-model")).select_by_value(job_id)
    browser.find_element(By.ID, "batch-file").send_keys(str(photos))
    browser.find_element(By.ID, "batch-coverage").click()  # each photo's crop coverage too
    browser.find_element(By.ID, "batch-submit").click()
    panel = wait_on_page(browser, "the batch job", lambda d: (
        d.find_element(By.ID, "batch-job") if d.find_element(By.ID, "batch-job").is_displayed()
        else None))
    batch_id = panel.get_attribute("data-job")
    wait_on_page(browser, "the batch job to succeed", lambda d: d.find_element(
        By.ID, "batch-job").get_attribute("data-status") == "succeeded", timeout=300)
    assert "5 of 5 photos" in visible_text(browser, "batch-count")
    assert "4 classified" in visible_text(browser, "batch-summary")
    assert "1 did not decode" in visible_text(browser, "batch-summary")
    assert browser.find_element(By.ID, "batch-progress").get_attribute("value") == "1"
    # The preview: a row per photo, the broken one with its error.
    rows = wait_on_page(browser, "the preview", lambda d: d.find_elements(
        By.CSS_SELECTOR, "#batch-preview tbody tr"))
    assert rows[0].get_attribute("data-file") == "broken.jpg"
    assert "broken.jpg" in rows[0].text and len(rows) == 5
    for row in rows[1:]:  # how much of the evidence the crop keeps, in percent
        assert re.fullmatch(r"\d{1,3}%|–", row.find_element(By.CSS_SELECTOR, "td.coverage").text)
    # The link downloads the job's CSV.
    link = browser.find_element(By.ID, "batch-download")
    assert link.is_displayed() and link.get_attribute("download")
    csv_text = httpx.get(link.get_attribute("href"), timeout=30).text
    assert csv_text.splitlines()[0].startswith("filename,label,p_")
    assert csv_text.splitlines()[0].endswith(",crop_coverage,error")
    assert len(csv_text.splitlines()) == 6
    labels = {r.get_attribute("data-file"): r.find_element(By.CSS_SELECTOR, "td.label").text
              for r in rows[1:]}
    for line in csv_text.splitlines()[2:]:
        name, label = line.split(",")[:2]
        assert labels[name] == label
    # The job is in the jobs list as well.
    wait_on_page(browser, "the batch job in the jobs list",
                 lambda d: row_status(d, batch_id) == "succeeded")


def test_the_overlay_shows_the_crop_and_toggles_to_the_whole_photo(
        browser: WebDriver, service: Stack, trained: dict, tmp_path: Path) -> None:
    open_page(browser, service)
    job_id = trained["job"]["id"]
    wait_on_page(browser, "the trained model in the model list", lambda d: d.find_elements(
        By.CSS_SELECTOR, f'#model-select option[value="{job_id}"]'))
    photo = tmp_path / "wide.png"  # wide: the centre crop cuts its sides off
    Image.new("RGB", (160, 64), (190, 90, 40)).save(photo)
    with photo.open("rb") as f:
        r = httpx.post(f"{service.url}/predict", files={"file": (photo.name, f)},
                       data={"crop": "full", "explain": "true"}, timeout=60)
    whole = r.json()["predictions"][0]

    browser.find_element(By.ID, "explain-toggle").click()
    browser.find_element(By.ID, "photo-input").send_keys(str(photo))
    overlay = wait_on_page(browser, "the overlay", lambda d: d.find_elements(
        By.CSS_SELECTOR, "#predict-result img.overlay"))[0]
    # The overlay is the original photo's size, the crop box drawn on it.
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth", overlay) == 160
    note = browser.find_element(By.CSS_SELECTOR, "#predict-result .explain-note").text
    assert note.startswith("heatmap of ") and ("inside the crop box" in note
                                               or "no evidence" in note)
    centre_src = overlay.get_attribute("src")
    toggle = browser.find_element(By.CSS_SELECTOR, "#predict-result .explain-toggle")
    assert toggle.get_attribute("aria-pressed") == "false"
    toggle.click()
    line = wait_on_page(browser, "the whole photo's prediction", lambda d: d.find_element(
        By.CSS_SELECTOR, "#predict-result .explain-full").text)
    assert line.startswith(f"whole photo: {whole['label']} (")
    assert toggle.get_attribute("aria-pressed") == "true"
    assert overlay.get_attribute("src") != centre_src  # the box is now the whole photo
    toggle.click()
    assert overlay.get_attribute("src") == centre_src
    assert not browser.find_element(By.CSS_SELECTOR, "#predict-result .explain-full"
                                    ).is_displayed()
    assert_no_script_errors(browser)


def test_a_job_s_curves_gain_points_while_it_trains(browser: WebDriver, service: Stack,
                                                    trained: dict, tmp_path: Path) -> None:
    open_page(browser, service)
    # A dataset through the page: its classes and counts are shown, and it becomes the
    # form's choice.
    upload_dataset(browser, trained["zip"], "colors via the page")
    report = wait_on_page(browser, "the dataset report", lambda d: d.find_elements(
        By.CSS_SELECTOR, "#dataset-result .dataset-report"))[0]
    assert "hotdog, not-hotdog" in report.text and "colors via the page" in report.text
    assert report.find_element(By.CSS_SELECTOR, "table.counts").text.split() == [
        "Images", "per", "class", "class", "train", "test", "hotdog", "8", "4",
        "not-hotdog", "8", "4"]
    selected = Select(browser.find_element(By.ID, "job-dataset")).first_selected_option
    assert "colors via the page" in selected.text

    # A scratch job of many epochs: while it runs, its curves gain points epoch by epoch.
    job_id = submit_tiny_job(browser, 500)
    seen: list[tuple[str | None, int, int]] = []

    def three_epochs_while_running() -> bool:  # every change of the page on the way
        state = tuple(browser.execute_script(WATCH, job_id))
        if not seen or seen[-1] != state:
            seen.append(state)
        assert state[0] in ("queued", "running"), seen
        return len({acc for status, acc, _ in seen if status == "running" and acc > 0}) >= 3

    wait_for(three_epochs_while_running, timeout=300, interval=0.1,
             what=lambda: f"{seen}\n{service.logs()}")
    assert all(acc == loss for _, acc, loss in seen), seen  # both charts, at once
    assert [acc for _, acc, _ in seen] == sorted(acc for _, acc, _ in seen)  # none lost
    # Cancel it from its row: it stops, and its curves keep every finished epoch.
    row = browser.find_element(By.CSS_SELECTOR, f'#jobs-body tr[data-job="{job_id}"]')
    row.find_element(By.CSS_SELECTOR, "button.cancel").click()
    wait_on_page(browser, "the cancelled job", lambda d: row_status(d, job_id) == "cancelled")
    metrics = httpx.get(f"{service.url}/jobs/{job_id}/metrics", timeout=30).json()
    assert 3 <= len(metrics) < 500
    wait_on_page(browser, "the last epochs", lambda d: points(d, "chart-acc", job_id) == len(
        metrics))
    for chart in ("chart-acc", "chart-loss"):
        for kind in ("train", "test"):
            assert points(browser, chart, job_id, kind) == len(metrics)
    # The numbers behind the chart are the API's.
    browser.find_element(By.CSS_SELECTOR, "#metrics-details summary").click()
    table = browser.find_element(By.CSS_SELECTOR, f'table.metrics[data-job="{job_id}"]')
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == len(metrics)
    cells = rows[-1].find_elements(By.TAG_NAME, "td")
    assert cells[3].text == f"{100 * metrics[-1]['test_acc']:.1f} %"
    assert f"epoch {len(metrics)} of 500" in row.text

    # A fine-tune from the first model on the same data: both on one chart.
    first = trained["job"]["id"]
    tuned = submit_tiny_job(browser, 3, init=f"job:{first}")
    wait_on_page(browser, "the fine-tune to finish", lambda d: row_status(d, tuned) in (
        "succeeded", "failed", "cancelled") and points(d, "chart-acc", tuned) == 3, timeout=300)
    assert row_status(browser, tuned) == "succeeded"
    assert points(browser, "chart-acc", job_id) == len(metrics)
    legend = browser.find_element(By.ID, "chart-legend").text
    assert f"job {tuned[:8]} (job {first[:8]})" in legend and job_id[:8] in legend
    # Untick the scratch job, then tick it again.
    tick = row.find_element(By.CSS_SELECTOR, "input.chart-tick")
    assert tick.is_selected()
    tick.click()
    wait_on_page(browser, "one job on the chart", lambda d: points(d, "chart-acc", job_id) == 0)
    assert points(browser, "chart-acc", tuned) == 3
    tick.click()
    wait_on_page(browser, "both jobs on the chart",
                 lambda d: points(d, "chart-acc", job_id) == len(metrics))
    assert points(browser, "chart-acc", tuned) == 3

    # The newest model is the active one until another is activated: activate the first.
    tuned_row = browser.find_element(By.CSS_SELECTOR, f'#jobs-body tr[data-job="{tuned}"]')
    assert tuned_row.find_element(By.CSS_SELECTOR, ".active-model").is_displayed()
    browser.find_element(By.CSS_SELECTOR,
                         f'#jobs-body tr[data-job="{first}"] button.activate').click()
    wait_on_page(browser, "the active-model mark", lambda d: d.find_element(
        By.CSS_SELECTOR, f'#jobs-body tr[data-job="{first}"] .active-model').is_displayed())
    assert not tuned_row.find_element(By.CSS_SELECTOR, ".active-model").is_displayed()
    assert tuned_row.find_element(By.CSS_SELECTOR, "button.activate").is_displayed()
    assert not row.find_element(By.CSS_SELECTOR, "button.activate").is_displayed()
    assert httpx.get(f"{service.url}/models", timeout=30).json()[0]["id"] == first
    assert "is now the active model" in visible_text(browser, "status")
    wait_on_page(browser, "the activation in the history", lambda d: len(
        d.find_elements(By.CSS_SELECTOR, "#history-list li")) == 1)

    # The fine-tune was trained on the dataset uploaded through the page, the active model on
    # the other one: the gate cannot compare them, and the page asks before forcing.
    dialog = browser.find_element(By.ID, "promote-dialog")
    for answer, expected in (("promote-keep", first), ("promote-force", tuned)):
        tuned_row.find_element(By.CSS_SELECTOR, "button.activate").click()
        wait_on_page(browser, "the gate's question", lambda d: dialog.is_displayed())
        reason = browser.find_element(By.ID, "promote-reason").text
        assert "against" in reason and "force" in reason, reason
        browser.find_element(By.ID, answer).click()
        wait_on_page(browser, "the dialog to close", lambda d: not dialog.is_displayed())
        wait_on_page(browser, "the answer", lambda d, expected=expected: d.find_element(
            By.CSS_SELECTOR, f'#jobs-body tr[data-job="{expected}"] .active-model'
        ).is_displayed() and httpx.get(f"{service.url}/models", timeout=30).json()[0][
            "id"] == expected)
        if answer == "promote-keep":
            assert "was not activated" in visible_text(browser, "status")
    assert "(forced)" in visible_text(browser, "status")
    items = wait_on_page(browser, "the forced activation in the history", lambda d: (
        lambda li: li if len(li) == 2 else None)(
        d.find_elements(By.CSS_SELECTOR, "#history-list li")))
    assert tuned[:8] in items[0].text and "forced" in items[0].text
    assert first[:8] in items[1].text and "forced" not in items[1].text
    # Roll back: the first model serves again.
    browser.find_element(By.ID, "rollback-button").click()
    wait_on_page(browser, "the rollback", lambda d: d.find_element(
        By.CSS_SELECTOR, f'#jobs-body tr[data-job="{first}"] .active-model').is_displayed())
    assert "Rolled back" in visible_text(browser, "status")
    assert httpx.get(f"{service.url}/models/history", timeout=30).json()[0]["action"] == (
        "rollback")
    assert_no_script_errors(browser)


def test_bad_uploads_are_explained_in_words(browser: WebDriver, service: Stack, trained: dict,
                                            tmp_path: Path) -> None:
    open_page(browser, service)
    # A zip that is not an ImageFolder tree.
    bad = tmp_path / "holiday.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("photos/beach.txt", "not an image folder")
    with bad.open("rb") as f:
        detail = httpx.post(f"{service.url}/datasets", files={"file": (bad.name, f)},
                            timeout=60).json()["detail"]
    assert isinstance(detail, str) and detail
    upload_dataset(browser, bad)
    shown = wait_on_page(browser, "the upload's error", lambda d: visible_text(d, "dataset-error"))
    assert detail in shown and "422" in shown
    assert not browser.find_elements(By.CSS_SELECTOR, "#dataset-result .dataset-report")

    # A file that is not an image, as a photo.
    note = tmp_path / "lunch.txt"
    note.write_text("a hot dog, probably")
    with note.open("rb") as f:
        detail = httpx.post(f"{service.url}/predict", files={"file": (note.name, f)},
                            timeout=60).json()["detail"]
    assert "lunch.txt" in detail
    browser.find_element(By.ID, "photo-input").send_keys(str(note))
    shown = wait_on_page(browser, "the photo's error", lambda d: visible_text(d, "predict-error"))
    assert detail in shown
    assert browser.find_element(By.CSS_SELECTOR, "#predict-result .verdict").text == (
        "not classified")

    # Invalid job parameters: FastAPI's list of fields, in words.
    wait_on_page(browser, "a dataset to choose", lambda d: Select(
        d.find_element(By.ID, "job-dataset")).first_selected_option.get_attribute("value"))
    fill(browser, "job-lr", "50")
    browser.find_element(By.ID, "job-submit").click()
    shown = wait_on_page(browser, "the job form's error", lambda d: visible_text(d, "job-error"))
    assert shown.startswith("learning rate (lr): Input should be less than or equal to 10"), shown
    assert "[object Object]" not in shown and "{" not in shown
    assert_no_script_errors(browser)


def test_the_page_shows_the_workers(browser: WebDriver, service: Stack) -> None:
    open_page(browser, service)
    (worker,) = service.wait_workers(1)
    item = f'#workers-list li[data-worker="{worker["name"]}"]'
    shown = wait_on_page(browser, "the worker", lambda d: d.find_elements(
        By.CSS_SELECTOR, item))[0].text
    assert "CPU only" in shown and ", ".join(worker["queues"]) in shown
    assert not browser.find_element(By.ID, "workers-empty").is_displayed()
    # "Start from: ImageNet weights" is offered only if the worker has them.
    imagenet = browser.find_element(By.CSS_SELECTOR, "#job-init option[value=imagenet]")
    assert imagenet.is_enabled() is worker["has_imagenet"]
    assert ("has the ImageNet weights" if worker["has_imagenet"] else "no ImageNet weights"
            ) in shown
    assert_no_script_errors(browser)


def test_the_storage_table_deletes_and_a_job_shows_its_log(
        browser: WebDriver, service: Stack, trained: dict[str, Any]) -> None:
    with trained["zip"].open("rb") as f:  # a dataset nobody uses, to delete from the table
        r = httpx.post(f"{service.url}/datasets", files={"file": ("spare.zip", f)},
                       data={"name": "spare"}, timeout=120)
    assert r.status_code == 201, r.text
    spare = r.json()["id"]
    open_page(browser, service)
    row = f'#storage-body tr[data-item="dataset:{spare}"]'
    wait_on_page(browser, "the storage table", lambda d: d.find_elements(By.CSS_SELECTOR, row))
    assert "free of" in visible_text(browser, "storage-summary")
    assert "spare" in browser.find_element(By.CSS_SELECTOR, row).text
    browser.find_element(By.CSS_SELECTOR, f'{row} button[data-action="delete"]').click()
    browser.switch_to.alert.accept()
    wait_on_page(browser, "the deleted dataset's row to go", lambda d: not d.find_elements(
        By.CSS_SELECTOR, row))
    assert httpx.get(f"{service.url}/datasets/{spare}", timeout=30).status_code == 404
    assert httpx.get(f"{service.url}/datasets/{trained['dataset']['id']}",
                     timeout=30).status_code == 200

    # The trained job's log, under its row in the job list.
    job_id = trained["job"]["id"]
    browser.find_element(By.CSS_SELECTOR,
                         f'#jobs-body tr[data-job="{job_id}"] button.logs-button').click()
    shown = wait_on_page(browser, "the job's log", lambda d: [
        e.text for e in d.find_elements(By.CSS_SELECTOR, f'tr[data-logs-of="{job_id}"] pre')
        if "attempt 1" in e.text])[0]
    assert f"job {job_id} done" in shown
    assert_no_script_errors(browser)


def test_the_page_works_with_an_api_key(browser: WebDriver, keyed_service: Stack,
                                        color_dataset: Path, tmp_path: Path) -> None:
    url = keyed_service.url
    # The page and its files load without the key; the API does not answer without it.
    page = httpx.get(url + "/", timeout=10)
    assert page.status_code == 200 and "default-src 'self'" in page.headers[
        "content-security-policy"]
    assert httpx.get(url + "/ui/app.js", timeout=10).status_code == 200
    assert httpx.get(url + "/jobs", timeout=10).status_code == 401

    browser.get(url + "/")
    dialog = wait_on_page(browser, "the key prompt", lambda d: d.find_element(
        By.ID, "key-dialog").is_displayed() and d.find_element(By.ID, "key-dialog"))
    # A wrong key is refused, and the page says so.
    fill(browser, "key-input", "not-the-key")
    browser.find_element(By.ID, "key-submit").click()
    shown = wait_on_page(browser, "the refusal", lambda d: visible_text(d, "key-error"))
    assert "refused" in shown
    fill(browser, "key-input", KEY)
    browser.find_element(By.ID, "key-submit").click()
    wait_on_page(browser, "the prompt to close", lambda d: not dialog.is_displayed())
    wait_on_page(browser, "the job list",
                 lambda d: d.find_element(By.ID, "jobs-empty").is_displayed())
    for section in ("jobs-error", "job-error", "predict-error", "curves-error"):
        assert visible_text(browser, section) == "", section
    assert browser.execute_script("return sessionStorage.getItem('hotdog.apiKey')") == KEY

    # No worker runs here: the page says so, and offers no ImageNet start.
    assert browser.find_element(By.ID, "workers-empty").is_displayed()
    assert not browser.find_elements(By.CSS_SELECTOR, "#workers-list li")
    # (#workers-empty shows before the page's /workers answer has come: wait for the answer)
    imagenet = browser.find_element(By.CSS_SELECTOR, "#job-init option[value=imagenet]")
    wait_on_page(browser, "the ImageNet start marked unavailable",
                 lambda _d: not imagenet.is_enabled() and "unavailable" in imagenet.text)
    assert Select(browser.find_element(By.ID, "job-init")).first_selected_option.get_attribute(
        "value") == "scratch"

    # Writes work with the key: a dataset, a job (refused while no worker runs, then queued
    # anyway), its cancel.
    upload_dataset(browser, zip_folder(color_dataset, tmp_path / "colors.zip"), "keyed")
    report = wait_on_page(browser, "the dataset report", lambda d: d.find_elements(
        By.CSS_SELECTOR, "#dataset-result .dataset-report"))[0]
    assert "hotdog, not-hotdog" in report.text
    browser.find_element(By.ID, "job-submit").click()
    refusal = wait_on_page(browser, "the refusal", lambda d: visible_text(d, "job-error"))
    assert "no live worker" in refusal and "hotdog worker" in refusal
    browser.find_element(By.ID, "job-queue_anyway").click()
    job_id = submit_tiny_job(browser, 2)
    wait_on_page(browser, "the queued job", lambda d: row_status(d, job_id) == "queued")
    progress = browser.find_element(
        By.CSS_SELECTOR, f'#jobs-body tr[data-job="{job_id}"] .progress-text').text
    assert progress == "waiting for a worker (none is running)"
    browser.find_element(By.CSS_SELECTOR,
                         f'#jobs-body tr[data-job="{job_id}"] button.cancel').click()
    wait_on_page(browser, "the cancelled job", lambda d: row_status(d, job_id) == "cancelled")
    job = httpx.get(f"{url}/jobs/{job_id}", headers={"X-API-Key": KEY}, timeout=10).json()
    assert job["status"] == "cancelled"

    # The key is kept for the session: a reload does not ask again.
    browser.refresh()
    wait_on_page(browser, "the job list", lambda d: row_status(d, job_id) == "cancelled")
    assert not browser.find_element(By.ID, "key-dialog").is_displayed()
    assert_no_script_errors(browser)


def test_the_page_offers_only_what_the_key_may_do(browser: WebDriver,
                                                  keyed_service: Stack) -> None:
    """A predict-only key sees the classify panel alone, and the page asks the API for
    nothing else (no 403 in the service's access log); the all-scopes key sees it all."""
    api_log = keyed_service.tmp / "api.log"
    start = api_log.stat().st_size
    browser.get(keyed_service.url + "/")
    dialog = wait_on_page(browser, "the key prompt", lambda d: d.find_element(
        By.ID, "key-dialog").is_displayed() and d.find_element(By.ID, "key-dialog"))
    fill(browser, "key-input", PREDICT_KEY)
    browser.find_element(By.ID, "key-submit").click()
    wait_on_page(browser, "the prompt to close", lambda d: not dialog.is_displayed())
    wait_on_page(browser, "the key's scopes",
                 lambda d: visible_text(d, "key-scopes") == "this key may: predict")
    wait_on_page(browser, "the model list", lambda d: "none trained yet" in d.find_element(
        By.ID, "model-select").text)  # GET /models: a predict key may list them
    assert browser.find_element(By.ID, "classify").is_displayed()
    for section in ("datasets", "train", "jobs", "history", "workers", "curves"):
        assert not browser.find_element(By.ID, section).is_displayed(), section
    assert visible_text(browser, "predict-error") == ""
    with api_log.open() as f:
        f.seek(start)
        answered = f.read()
    assert '"GET /models HTTP/1.1" 200' in answered, answered
    assert not re.search(r'HTTP/1.1" 403', answered), answered

    # The "API key…" button takes another key: the all-scopes one shows every panel.
    browser.find_element(By.ID, "key-button").click()
    wait_on_page(browser, "the key prompt", lambda d: dialog.is_displayed())
    fill(browser, "key-input", KEY)
    browser.find_element(By.ID, "key-submit").click()
    wait_on_page(browser, "every panel", lambda d: all(d.find_element(By.ID, s).is_displayed()
                 for s in ("classify", "datasets", "train", "jobs", "workers", "curves")))
    assert "admin" in visible_text(browser, "key-scopes")
    assert_no_script_errors(browser)


def test_the_data_panel_shows_leakage_and_makes_a_new_version(
        browser: WebDriver, service: Stack, tmp_path: Path) -> None:
    src = write_color_dataset(tmp_path / "leaky", train=4, test=2, seed=3)
    shutil.copy(src / "test" / "hotdog" / "001.jpg", src / "train" / "hotdog" / "copy.jpg")
    data = zip_folder(src, tmp_path / "leaky.zip")
    with data.open("rb") as f:
        r = httpx.post(f"{service.url}/datasets", files={"file": ("leaky.zip", f)},
                       data={"name": "leaky"}, timeout=120)
    assert r.status_code == 201, r.text
    dataset = r.json()

    open_page(browser, service)
    select = wait_on_page(browser, "the dataset in the Data panel", lambda d: d.find_elements(
        By.CSS_SELECTOR, f'#data-dataset option[value="{dataset["id"]}"]')
        and Select(d.find_element(By.ID, "data-dataset")))
    select.select_by_value(dataset["id"])
    summary = wait_on_page(browser, "the report's summary", lambda d: d.find_elements(
        By.CSS_SELECTOR, f'#data-summary .report-summary[data-dataset="{dataset["id"]}"]'))[0]
    assert "leakage: 1 val/test image(s)" in summary.text
    group = browser.find_element(By.CSS_SELECTOR, "#data-leakage .group")
    assert "same pixels" in group.text
    assert "train/hotdog/copy.jpg" in group.text and "test/hotdog/001.jpg" in group.text
    # Both thumbnails load (fetched from /datasets/{id}/images/{image_id}).
    wait_on_page(browser, "the thumbnails", lambda d: d.execute_script(
        "return [...document.querySelectorAll('#data-leakage img')]"
        ".filter((i) => i.complete && i.naturalWidth > 0).length") == 2)
    assert "No duplicates within a split" in visible_text(browser, "data-duplicates")

    copy_id = next(i["image_id"] for i in httpx.get(
        f"{service.url}/datasets/{dataset['id']}/report", timeout=10).json()["report"]
        ["groups"][0]["images"] if i["split"] == "train")
    browser.find_element(By.CSS_SELECTOR, f'#data-leakage button[data-drop="{copy_id}"]').click()
    button = browser.find_element(By.ID, "data-relabel")
    assert button.text == "Make a new version with 1 change" and button.is_enabled()
    button.click()
    result = wait_on_page(browser, "the new version", lambda d: visible_text(
        d, "data-relabel-result"))
    new = [d for d in httpx.get(f"{service.url}/datasets", timeout=10).json()
           if d["parent_id"] == dataset["id"]]
    assert len(new) == 1 and new[0]["changes"] == {str(copy_id): "drop"}
    assert new[0]["id"] in result
    # The panel now shows the new version, whose report has no leakage left.
    wait_on_page(browser, "the new version's report", lambda d: d.find_elements(
        By.CSS_SELECTOR, f'#data-summary .report-summary[data-dataset="{new[0]["id"]}"]'))
    assert "No photo is in two splits" in visible_text(browser, "data-leakage")
    assert_no_script_errors(browser)


def test_the_page_needs_nothing_from_elsewhere() -> None:
    """No CDN, font or script from another site: the page works offline (and its CSP,
    ``default-src 'self'``, would block them anyway)."""
    web = Path(__file__).resolve().parent.parent / "app" / "web"
    for path in sorted(web.iterdir()):
        text = path.read_text().replace("http://www.w3.org/2000/svg", "")
        assert not re.search(r"(https?:)?//[\w.-]+\.[a-z]{2,}", text), path
        assert "@import" not in text and "url(" not in text, path


def test_the_page_is_packaged(tmp_path: Path) -> None:
    """A non-editable install ships the page (setuptools package-data). Built from a copy, so
    that the checkout gets no build/ folder."""
    root = Path(__file__).resolve().parent.parent
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("app", "worker"):
        shutil.copytree(root / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(tmp_path / "wheel"), str(src)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "wheel").glob("hotdog-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"app/web/index.html", "app/web/app.js", "app/web/style.css",
            "app/web/data.js"} <= names


def test_the_label_review_grid_starts_a_review_and_relabels_a_flagged_photo(
        browser: WebDriver, service: Stack, color_dataset: Path, tmp_path: Path) -> None:
    """A model without a review: the Data panel offers one (POST /jobs/{id}/review), shows
    the flagged photos as a grid once it is done, and relabels one into a new version."""
    noisy = tmp_path / "noisy"
    flip_labels(color_dataset, noisy, fraction=0.25, seed=1)
    dataset, job = train_through_api(service, zip_folder(noisy, tmp_path / "noisy.zip"), "noisy")

    open_page(browser, service)
    wait_on_page(browser, "the dataset in the Data panel", lambda d: d.find_elements(
        By.CSS_SELECTOR, f'#data-dataset option[value="{dataset["id"]}"]'))
    Select(browser.find_element(By.ID, "data-dataset")).select_by_value(dataset["id"])
    wait_on_page(browser, "its trained model", lambda d: d.find_elements(
        By.CSS_SELECTOR, f'#data-review-job option[value="{job["id"]}"]'))
    Select(browser.find_element(By.ID, "data-review-job")).select_by_value(job["id"])
    browser.find_element(By.ID, "data-review-load").click()
    start = wait_on_page(browser, "the offer of a review", lambda d: d.find_element(
        By.ID, "data-review-start").is_displayed() and d.find_element(By.ID, "data-review-start"))
    assert "no label review yet" in visible_text(browser, "data-review-status")
    start.click()
    tiles = wait_on_page(browser, "the flagged photos", lambda d: d.find_elements(
        By.CSS_SELECTOR, "#data-review-grid .tile"), timeout=240)
    review = httpx.get(f"{service.url}/jobs/{job['id']}/label-review", timeout=10).json()
    assert review["status"] == "succeeded" and len(tiles) == len(review["issues"]) > 0
    first = min(review["issues"], key=lambda i: i["rank"])
    assert first["path"] in tiles[0].text and first["suggested"] in tiles[0].text
    tiles[0].find_element(By.CSS_SELECTOR, 'button[data-action="relabel"]').click()
    button = browser.find_element(By.ID, "data-relabel")
    assert button.text == "Make a new version with 1 change"
    button.click()
    wait_on_page(browser, "the new version", lambda d: visible_text(d, "data-relabel-result"))
    new = [d for d in httpx.get(f"{service.url}/datasets", timeout=10).json()
           if d["parent_id"] == dataset["id"]]
    assert len(new) == 1 and new[0]["changes"] == {str(first["image_id"]): first["suggested"]}
    assert_no_script_errors(browser)
