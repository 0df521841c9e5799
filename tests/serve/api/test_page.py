"""The web page in headless Chromium, on a real index with typed fields: random items before any
search, an uploaded, dropped or pasted image gives k results with the gate's predicted class,
a click on a result searches by its id, and the filter controls built from the schema restrict
the results (a filter keeping nothing shows none).

Needs Debian's `chromium` and `chromium-driver` (installed by .ci/run); skipped without them.
With COINS_PAGE_SCREENSHOTS=DIR the results views are saved there as PNG files:

    COINS_PAGE_SCREENSHOTS=docs/figures .venv/bin/pytest tests/serve/api/test_page.py -m slow
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_fakes import COARSE, FakeEmbedder, colour_image
from serve_fuzz import IndexArtifacts
from serve_real import serving

from coins.serve.api.app import create_app
from coins.serve.api.settings import ServeSettings
from coins.serve.index.build import build_index

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = os.environ.get("COINS_PAGE_SCREENSHOTS")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian chromium and chromium-driver (.ci/run installs them)",
    ),
]
N = 36
BRANDS = ("acme", "zenith", "orbit")


def shop_rows(paths: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "id": 100 + j,
            "path": paths[j],
            "coarse": COARSE[j % 3],
            "fine": str(j % 6),
            "brand": BRANDS[j % len(BRANDS)],
            "price": f"{5 + 2.5 * j:.2f}",
            "in_stock": "true" if j % 4 else "false",
        }
        for j in range(N)
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """A real flat index of N solid-colour images (files) with brand, price and in_stock
    fields, served with the stand-in model by uvicorn in a thread on a free port."""
    root = tmp_path_factory.mktemp("page")
    (root / "gallery").mkdir()
    paths = []
    for j in range(N):
        paths.append(str(root / "gallery" / f"{j}.png"))
        colour_image(j, size=48).save(paths[-1])
    embedder = FakeEmbedder()
    xb = embedder.embed_images([colour_image(j, size=48) for j in range(N)]).vectors
    ids = np.arange(100, 100 + N)
    build_index(ids, xb, shop_rows(paths), root / "index", "flat", model_sha256=embedder.sha256,
                tune_queries=0)  # fmt: skip
    settings = ServeSettings(
        index_dir=root / "index",
        model=root / "m.onnx",
        workers=2,
        threads=1,
        image_roots=[root / "gallery"],
    )
    app = create_app(settings, IndexArtifacts())
    with serving(app) as url:
        yield url


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


CARDS = "return Array.from(document.querySelectorAll('#results > li')).map(li => li.textContent)"
IDS = (
    "return Array.from(document.querySelectorAll('#results > li')).map(li => Number(li.dataset.id))"
)


def cards(driver) -> list[str]:
    return list(driver.execute_script(CARDS))


def screenshot(driver, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SCREENSHOTS) / f"page-{name}.png"))


def all_images_loaded(driver) -> bool:
    script = "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
    return bool(driver.execute_script(script))


def test_browse_search_click_and_filter(server, browser, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(server)
    wait.until(lambda d: f"{N} items" in d.find_element(By.ID, "index-info").text)
    # random items before any search
    wait.until(lambda d: len(cards(d)) == 12)
    assert "random items" in browser.find_element(By.ID, "status").text
    assert len(set(browser.execute_script(IDS))) == 12
    # filter controls built from the schema and classes
    for control in ("coarse", "fine", "brand", "price-gte", "price-lte", "in_stock"):
        browser.find_element(By.ID, f"filter-{control}")

    # search by an image: the same colour first, the gate's predicted class shown
    query = tmp_path / "query.png"
    colour_image(4, size=48).save(query)
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("6")
    browser.find_element(By.ID, "query-fine").send_keys("4")
    browser.find_element(By.ID, "image").send_keys(str(query))
    wait.until(lambda d: len(cards(d)) == 6 and "#1" in cards(d)[0])
    first = browser.find_elements(By.CSS_SELECTOR, "#results > li")[0]
    assert "id 104" in first.text and "match" in first.get_attribute("class")
    assert "brand: zenith" in first.text and "price: 15" in first.text
    assert browser.find_element(By.ID, "gate-info").text.startswith("predicted coarse ")
    # the gate on: the same query again, the page says what the gate did
    Select(browser.find_element(By.ID, "gate")).select_by_value("coarse")
    wait.until(lambda d: "searched coarse" in d.find_element(By.ID, "gate-info").text
               or "not gated" in d.find_element(By.ID, "gate-info").text)  # fmt: skip
    assert "(p 0." in browser.find_element(By.ID, "gate-info").text
    wait.until(lambda d: len(cards(d)) == 6)
    wait.until(all_images_loaded)
    screenshot(browser, "image-query")

    # click a result: search by its id (never the item itself)
    clicked = browser.execute_script(IDS)[1]
    browser.find_elements(By.CSS_SELECTOR, "#results > li > img")[1].click()
    wait.until(lambda d: browser.find_element(By.CSS_SELECTOR, "#query img").get_attribute("src")
               .endswith(f"/v1/items/{clicked}/image"))  # fmt: skip
    wait.until(lambda d: len(cards(d)) == 6 and clicked not in d.execute_script(IDS))
    assert browser.find_element(By.ID, "gate-info").is_displayed() is False

    # filters re-run the query: coarse bags, in stock, price up to 60
    Select(browser.find_element(By.ID, "filter-coarse")).select_by_value("bags")
    Select(browser.find_element(By.ID, "filter-in_stock")).select_by_value("true")
    high = browser.find_element(By.ID, "filter-price-lte")
    high.send_keys("60")
    browser.find_element(By.ID, "k").click()  # leaves the price field: its change event
    rows = {r["id"]: r for r in shop_rows([""] * N)}
    want = {
        i for i, r in rows.items()
        if r["coarse"] == "bags" and r["in_stock"] == "true" and float(r["price"]) <= 60
        and i != clicked
    }  # fmt: skip
    assert 0 < len(want) <= 6  # k = 6: every matching item is shown, and only those
    wait.until(lambda d: set(d.execute_script(IDS)) == want)
    assert '"key":"coarse"' in browser.execute_script(
        "return document.getElementById('filter-json').textContent"
    )
    wait.until(all_images_loaded)
    screenshot(browser, "filtered")

    # a brand nobody has: no results, said so
    brand = browser.find_element(By.ID, "filter-brand")
    brand.send_keys("nobody")
    browser.find_element(By.ID, "k").click()
    wait.until(lambda d: cards(d) == [])
    assert "nothing matches" in browser.find_element(By.ID, "status").text


def test_a_dropped_or_pasted_image_is_searched(server, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(server)
    wait.until(lambda d: len(cards(d)) == 12)
    png = io.BytesIO()
    colour_image(7, size=48).save(png, format="PNG")
    data = base64.b64encode(png.getvalue()).decode("ascii")
    send = """
        const [data, kind] = arguments;
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "q.png", {type: "image/png"}));
        if (kind === "drop") {
            document.getElementById("drop").dispatchEvent(
                new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
        } else {
            document.dispatchEvent(
                new ClipboardEvent("paste", {clipboardData: dt, bubbles: true, cancelable: true}));
        }
    """
    for kind in ("drop", "paste"):
        browser.execute_script("document.getElementById('results').replaceChildren()")
        browser.execute_script(send, data, kind)
        wait.until(lambda d: len(cards(d)) == 12 and "#1" in cards(d)[0])
        assert browser.execute_script(IDS)[0] == 107, kind
        assert (
            browser.find_element(By.CSS_SELECTOR, "#query img")
            .get_attribute("src")
            .startswith("blob:")
        )
