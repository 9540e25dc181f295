"""The operator's page in a real browser: headless Chromium (Debian's) driven by Selenium, against a real node.

CI installs Chromium and sets VISION_NODE_BROWSER_TESTS=required, so there a missing browser fails;
elsewhere these tests are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.nodes import start_node, stop, wait_for_http

REQUIRED = os.environ.get("VISION_NODE_BROWSER_TESTS") == "required"
CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the dev extra
    webdriver = None

NEEDED = (("chromium", CHROMIUM), ("chromedriver", DRIVER), ("selenium", webdriver))
MISSING = ", ".join(what for what, found in NEEDED if not found)
if MISSING and REQUIRED:
    raise RuntimeError(f"browser tests are required here, but {MISSING} is missing")
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {MISSING} (apt-get install chromium chromium-driver)")
IMAGES = ("depth", "segmentation", "pose")


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def node(engines, log, **env):
    proc, url = start_node(engines, log, **env)
    wait_for_http(f"{url}/ready", proc, log)
    return proc, url


def errors(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def loaded(browser, image_id: str) -> bool:
    return browser.execute_script(f"return document.getElementById('{image_id}').naturalWidth") > 0


def test_the_page_shows_what_is_served_and_a_sample_frame_through_every_capability(tiny_build, tmp_path, browser):
    proc, url = node(tiny_build[0], tmp_path / "node.log")
    try:
        browser.get(f"{url}/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_elements(By.ID, "row-pose"))
        rows = browser.find_element(By.ID, "capabilities").text
        assert all(name in rows for name in IMAGES) and "vitpose-base-simple-tiny" in rows
        assert browser.find_element(By.ID, "demo").is_displayed()  # demo weights are said
        # no --compile-check on this build: no GPU memory figure is claimed, and the page says where one comes from
        assert "no TensorRT figures" in browser.find_element(By.ID, "gpu-memory").text
        wait.until(lambda b: b.find_element(By.ID, "ready").text == "ready")
        browser.find_element(By.ID, "sample").click()
        WebDriverWait(browser, 60).until(lambda b: all(loaded(b, f"out-{name}") for name in IMAGES))
        assert loaded(browser, "frame") and "in the node" in browser.find_element(By.ID, "cap-depth").text
        wait.until(lambda b: "ms" in b.find_element(By.ID, "row-depth").find_element(By.CLASS_NAME, "latency").text)
        browser.save_screenshot(str(tmp_path / "page.png"))
        assert not errors(browser)
        browser.get(f"{url}/docs")  # the API document, rendered offline
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".opblock")) >= 6)
        assert "/infer/depth+segmentation+pose" in browser.page_source and not errors(browser)
    finally:
        stop(proc)


def test_with_a_token_the_page_asks_for_it_and_sends_nothing_without_it(tiny_build, tmp_path, browser):
    proc, url = node(tiny_build[0], tmp_path / "node.log", VISION_NODE_TOKEN="s3cret", VISION_NODE_CAPABILITIES="depth")
    try:
        browser.get(f"{url}/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_element(By.ID, "token-box").is_displayed())
        browser.find_element(By.ID, "sample").click()
        wait.until(lambda b: "needs its token" in b.find_element(By.ID, "error").text)
        assert not loaded(browser, "out-depth")
        browser.find_element(By.ID, "token").send_keys("s3cret")
        browser.find_element(By.ID, "sample").click()
        WebDriverWait(browser, 60).until(lambda b: loaded(b, "out-depth"))
        assert not browser.find_element(By.ID, "error").is_displayed() and not errors(browser)
    finally:
        stop(proc)
