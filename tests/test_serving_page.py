"""The search page in a real browser: headless Debian Chromium driven by Selenium through the system chromedriver,
against mm-serve (uvicorn on 127.0.0.1) with an index of the session-trained model's images, which it ranks
correctly. Typing a caption must bring its image first; choosing an image file must find that image first."""

import shutil
import socket
import threading
import time

import pytest
import uvicorn

from serving_mm.app import create_app
from serving_mm.collection import build
from serving_mm.runner import load_runner

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def server(trained_clip, tmp_path_factory):
    index_dir = tmp_path_factory.mktemp("page_index")
    build(trained_clip.folder, trained_clip.media, index_dir)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(load_runner(str(trained_clip.folder)), index_dir=index_dir)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail(
            "Debian's chromium and chromium-driver are part of the serve set-up: run `bash scripts/install.sh` "
            "(as root) or `apt-get install chromium chromium-driver`."
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def first_result(driver, previous=None):
    """(caption, score, natural width of its image or None, text) of the first result once it differs from
    `previous`; read in one go, retried while the page re-renders the list (which makes elements stale)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(driver):
        items = driver.find_elements(By.CSS_SELECTOR, "#results li.result")
        if not items or items[0].text == previous:
            return False
        item = items[0]
        images = item.find_elements(By.TAG_NAME, "img")
        width = (
            driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", images[0])
            if images
            else None
        )
        if images and not width:
            return False  # not loaded yet
        caption = item.find_element(By.CSS_SELECTOR, ".caption").text
        return caption, float(item.find_element(By.CSS_SELECTOR, ".score").text), width, item.text

    return WebDriverWait(driver, 30, ignored_exceptions=(StaleElementReferenceException,)).until(ready)


def test_typed_caption_finds_its_image_first(server, browser, trained_clip):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.common.exceptions import StaleElementReferenceException

    browser.get(server)
    # The page fills the modality menu from /info once loaded (replacing the element): wait for the image choice.
    WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: d.find_element(By.ID, "modality").get_attribute("value") == "image"
    )
    previous = None
    for i in (3, 0):
        box = browser.find_element(By.ID, "query")
        box.clear()
        box.send_keys(trained_clip.captions[i], Keys.ENTER)
        caption, score, width, previous = first_result(browser, previous)
        assert caption == trained_clip.captions[i]
        assert 0 < score <= 1
        assert width == 32  # the result shows the indexed image itself
    results = browser.find_elements(By.CSS_SELECTOR, "#results li.result")
    assert len(results) == 6


def test_choosing_an_image_file_finds_that_image_first(server, browser, trained_clip):
    from selenium.webdriver.common.by import By

    browser.get(server)
    first_text = None
    browser.find_element(By.ID, "file").send_keys(str(trained_clip.media / "images" / "5.png"))
    caption, score, _, _ = first_result(browser, first_text)
    assert caption == trained_clip.captions[5] and score == pytest.approx(1.0, abs=1e-3)
