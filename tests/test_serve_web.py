"""The web page of ``avmem serve`` in headless Chromium (Debian's chromium + chromium-driver, driven by selenium):
a real uvicorn server on 127.0.0.1 with the tiny model and an API key; the page asks for the key, creates a camera
session from Chromium's fake camera, pushes frames over the WebSocket, asks and shows the streamed answer and the
telemetry; then an upload session. Screenshots go to pytest's temporary folder, or to docs/serve_web*.png with
AVMEM_SCREENSHOTS=docs (how the pictures in docs/serving.md are refreshed)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[dev]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not CHROMIUM or not CHROMEDRIVER:
    pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from avmem.model import load_model
from avmem.serve import ServeConfig, create_app
from avmem.serve.background import BackgroundServer
from avmem.synth import write_test_pattern_clip

KEY = "web-test-key-0123456789"


@pytest.fixture(scope="module")
def server():
    config = ServeConfig(model="tiny-qwen3-vl", api_keys=[KEY],
                         session_defaults={"video_tokens": 64, "audio_tokens": 32, "chunk_frames": 4,
                                           "max_new_tokens": 12})
    with BackgroundServer(create_app(config, load_model("tiny-qwen3-vl"))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="avmem-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1000",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver, predicate, timeout: float = 60.0, what: str = ""):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: predicate(d))
    except TimeoutException:
        logs = driver.find_element(By.ID, "log").text
        raise AssertionError(f"timed out waiting for {what}; page log: {logs!r}") from None


def ask_on_page(driver, question: str) -> str:
    before = len(driver.find_elements(By.CSS_SELECTOR, ".msg.a"))
    box = driver.find_element(By.ID, "question")
    box.send_keys(question)
    driver.find_element(By.ID, "ask").click()
    done = wait(driver, lambda d: (a := d.find_elements(By.CSS_SELECTOR, ".msg.a")) and len(a) > before
                and "streaming" not in a[-1].get_attribute("class") and a[-1], 120, "the answer")
    assert "error" not in done.get_attribute("class"), done.text
    return done.text


def _screenshot_dir(tmp_path: Path) -> Path:
    """docs/ when AVMEM_SCREENSHOTS=docs (refreshing the pictures in docs/serving.md), else the test's tmp folder."""
    if os.environ.get("AVMEM_SCREENSHOTS") == "docs":
        return Path(__file__).resolve().parent.parent / "docs"
    return tmp_path


def test_page_camera_push_ask_and_upload(server, browser, tmp_path):
    d = browser
    d.get(server + "/")
    wait(d, lambda d: "model tiny-qwen3-vl" in d.find_element(By.ID, "server").text, 30, "the server line")
    assert "need" in d.find_element(By.ID, "keybox").get_attribute("class")  # no key yet: the page asks for one
    key = d.find_element(By.ID, "apikey")
    key.send_keys(KEY)
    d.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    wait(d, lambda d: "need" not in d.find_element(By.ID, "keybox").get_attribute("class"), 10, "the key accepted")

    # camera: Chromium's fake device, JPEG frames + PCM audio over the push WebSocket
    fps = d.find_element(By.ID, "fps")
    fps.clear()
    fps.send_keys("4")
    d.find_element(By.ID, "start").click()
    wait(d, lambda d: int(d.find_element(By.ID, "session").get_attribute("data-frames") or 0) >= 8, 90,
         "8 camera frames absorbed")
    sid = d.find_element(By.ID, "session").text.split()[1]
    answer = ask_on_page(d, "What is on the camera?")
    assert answer.strip() and "tokens" in answer
    with_stats = wait(d, lambda d: int(d.find_element(By.ID, "v-video").text) > 0 and d, 30, "telemetry")
    assert d.find_element(By.ID, "v-loss").text != "–"  # the TTT memory reports its loss
    time.sleep(2.5)  # a few more telemetry points on the chart
    shots = _screenshot_dir(tmp_path)
    with_stats.save_screenshot(str(shots / "serve_web.png"))
    frames = int(d.find_element(By.ID, "session").get_attribute("data-frames"))
    d.find_element(By.ID, "stop").click()
    wait(d, lambda d: d.find_element(By.ID, "session").text == "no session", 30, "the session closed")
    assert frames >= 8 and sid

    # upload: the browser plays the file while the server decodes it
    clip = write_test_pattern_clip(tmp_path / "clip.mp4", seconds=6, fps=10, size=(90, 160))
    d.find_element(By.CSS_SELECTOR, ".tab[data-tab=upload]").click()
    d.find_element(By.ID, "file").send_keys(str(clip))
    d.find_element(By.ID, "start").click()
    wait(d, lambda d: "ended" in d.find_element(By.ID, "session").text, 90, "the upload decoded")
    answer = ask_on_page(d, "What moved across the screen?")
    assert answer.strip()
    d.save_screenshot(str(shots / "serve_web_upload.png"))
