"""The web page in headless Chromium: upload an image, see k results, click one to search by it.

Needs Debian's `chromium` and `chromium-driver` (installed by .ci/run); skipped without them.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import uvicorn
from serve_fakes import FakeArtifacts, colour_image
from serve_real import free_port

from coins.serve.api.app import create_app
from coins.serve.api.settings import ServeSettings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian chromium and chromium-driver (.ci/run installs them)",
    ),
]


@pytest.fixture
def server(tmp_path):
    """The app on fakes (gallery images as files), in a uvicorn thread on a free port."""
    (tmp_path / "gallery").mkdir()
    app = create_app(
        ServeSettings(index_dir=tmp_path, model=tmp_path / "m.onnx", workers=2, threads=1),
        FakeArtifacts(image_dir=tmp_path / "gallery"),
    )
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not (srv.started and app.state.service.ready):
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_upload_an_image_and_see_k_results(server, browser, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    query = tmp_path / "query.png"
    colour_image(4).save(query)
    browser.get(server)
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: "30 items" in d.find_element(By.ID, "index-info").text)
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("5")
    browser.find_element(By.ID, "query-fine").send_keys("4")
    browser.find_element(By.ID, "image").send_keys(str(query))
    browser.find_element(By.ID, "search").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li")) == 5)
    results = browser.find_elements(By.CSS_SELECTOR, "#results li")
    assert "id 104" in results[0].text and "match" in results[0].get_attribute("class")
    assert "predicted coarse" in browser.find_element(By.ID, "status").text
    loaded = (
        "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"
    )
    wait.until(lambda d: d.execute_script(loaded) >= 6)  # the query preview and 5 thumbnails
    clicked = results[1].text.split("id ")[1].split(" ")[0]
    results[1].find_element(By.TAG_NAME, "img").click()  # search by that item's id
    texts = "return Array.from(document.querySelectorAll('#results li')).map(li => li.textContent)"
    wait.until(lambda d: all(f"id {clicked} " not in t for t in d.execute_script(texts)))
    preview = browser.find_element(By.CSS_SELECTOR, "#query img").get_attribute("src")
    assert preview.endswith(f"/v1/items/{clicked}/image")
    assert len(browser.execute_script(texts)) == 5
