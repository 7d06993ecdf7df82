"""The page at / in a real headless Chromium (Debian's chromium + chromium-driver, driven
by selenium) against a real `fmrec serve` and Redis: recommendations, rating, the genre
filter, a new user, the explain chart, the API key prompt, no console errors."""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from app.web import WEB_DIR
from model.bundle import Bundle
from model.data import Dataset
from model.features import FeatureSpec
from tests.support.api_client import load_users, service_settings, serving
from tests.support.live_server import LiveServer
from tests.support.redis_server import RedisServer

KEY = "web-" + secrets.token_hex(12)
WAIT_S = 60  # generous: a shared CI machine; nothing here is timed


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"{names[0]} not found: `apt-get install chromium chromium-driver` "
                "(`make test` does)")


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    """Headless Chromium as root may run: no sandbox, no GPU, nothing from the network."""
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium must not download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1000,1400",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(
        _binary("chromedriver"), log_output=str(tmp_path / "chromedriver.log")))
    try:
        yield driver
    finally:
        driver.quit()


def _serve(settings: dict[str, str], bundle: Path, redis: RedisServer, log: Path
           ) -> LiveServer:
    return LiveServer({"FMREC_BUNDLE": str(bundle), "FMREC_REDIS_URL": redis.url,
                       **settings}, log).start()


def _items(driver: WebDriver) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, "#recs > li")


def _ids(driver: WebDriver) -> list[str]:
    """Read in one script: the list may be re-rendered between two WebDriver calls."""
    ids: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#recs > li'), li => li.dataset.movie)")
    return ids


def _wait(driver: WebDriver, what: Any, message: str) -> Any:
    return WebDriverWait(driver, WAIT_S).until(what, message)


def _wait_list(driver: WebDriver, unlike: list[str] | None = None, n: int = 10
               ) -> list[str]:
    """The recommendations once `n` are shown (and differ from `unlike`)."""
    _wait(driver, lambda d: len(_ids(d)) == n and _ids(d) != unlike
          and d.find_element(By.ID, "recs").get_attribute("aria-busy") == "false",
          f"{n} recommendations (other than {unlike}) did not appear: {_ids(driver)}, "
          f"status {driver.find_element(By.ID, 'status').text!r}")
    return _ids(driver)


def _console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_page_recommends_rates_filters_and_explains(
        browser: WebDriver, small_bundle_path: Path, small_bundle: Bundle,
        redis_server: RedisServer, small_data: tuple[Dataset, FeatureSpec],
        tmp_path: Path) -> None:
    data, _ = small_data
    asyncio.run(load_users(service_settings(bundle=small_bundle_path,
                                            redis_url=redis_server.url), data))
    server = _serve({"FMREC_ALLOW_UNAUTHENTICATED_WRITES": "true"}, small_bundle_path,
                    redis_server, tmp_path / "serve.log")
    catalog = small_bundle.catalog
    try:
        browser.get(server.url + "/")
        first = _wait_list(browser)
        user = browser.find_element(By.ID, "user-id").get_attribute("value")
        assert user == "1"  # the first training user the page suggests
        api = httpx.post(server.url + "/recommend", json={
            "user": {"id": user}, "n": 10, "explain": True}, timeout=30).json()
        assert first == [i["movie_id"] for i in api["items"]]
        for li, item in zip(_items(browser), api["items"], strict=True):
            row = catalog.row(item["movie_id"])
            assert row is not None
            assert str(catalog.titles[row]) in li.text
            assert ", ".join(catalog.genres[row]) in li.text
            assert f"{item['rating']:.2f}" in li.text
            titles = [b["title"] for b in item["because"]]
            assert len(titles) == 2 and li.find_element(
                By.CLASS_NAME, "because").text == "Because you rated " + " and ".join(titles)

        # rate the top movie 1 of 5, from the keyboard: it leaves and the list re-ranks
        rate = browser.find_element(By.CSS_SELECTOR, f'#recs li[data-movie="{first[0]}"] '
                                                     'button[data-rate="1"]')
        rate.send_keys(Keys.ENTER)
        after = _wait_list(browser, unlike=first)
        assert first[0] not in after
        stored = httpx.post(server.url + "/recommend", json={
            "user": {"id": user}, "n": 10}, timeout=30).json()
        assert after == [i["movie_id"] for i in stored["items"]]

        # explain the new top movie: the bars (bias + fields) add up to the score shown
        browser.find_element(By.CSS_SELECTOR, "#recs li .title").click()
        _wait(browser, lambda d: d.find_element(By.ID, "explain").is_displayed(),
              "the explanation did not open")
        shown = browser.find_element(By.ID, "explain-score")
        bars = [float(b.get_attribute("data-value") or "nan")
                for b in browser.find_elements(By.CSS_SELECTOR, "#chart rect.bar")]
        score = float(shown.get_attribute("data-score") or "nan")
        assert len(bars) >= 3 and sum(bars) == pytest.approx(score, abs=1e-6)
        assert float(shown.text) == pytest.approx(score, abs=5e-4)
        explained = httpx.post(server.url + "/explain", json={
            "user": {"id": user}, "movies": [{"id": after[0]}]}, timeout=30).json()
        assert score == pytest.approx(explained["score"], abs=1e-6)
        browser.save_screenshot(str(tmp_path / "page.png"))

        # genre filter
        Select(browser.find_element(By.ID, "genre")).select_by_value("Drama")
        unrated = httpx.post(server.url + "/recommend", json={
            "user": {"id": user}, "n": 10, "genres": ["Drama"]}, timeout=30).json()["items"]
        dramas = _wait_list(browser, unlike=after, n=len(unrated))
        assert dramas == [i["movie_id"] for i in unrated]
        assert all("Drama" in catalog.genres[catalog.row(m) or 0] for m in dramas)

        # a new user: a fresh id, a cold-start list
        browser.find_element(By.ID, "new-user").click()
        _wait(browser, lambda d: (d.find_element(By.ID, "user-id").get_attribute("value")
                                  or "").startswith("web-"), "no new user")
        _wait_list(browser, unlike=dramas)

        # phone width: nothing wider than the window
        browser.set_window_size(390, 844)
        assert browser.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth")
        assert _console_errors(browser) == []
        assert (tmp_path / "page.png").stat().st_size > 0
    finally:
        server.stop()


def test_page_asks_for_the_key_when_writes_need_one(
        browser: WebDriver, small_bundle_path: Path, redis_server: RedisServer,
        tmp_path: Path) -> None:
    server = _serve({"FMREC_API_KEYS": KEY}, small_bundle_path, redis_server,
                    tmp_path / "serve.log")
    try:
        browser.get(server.url + "/")
        first = _wait_list(browser)
        key_form = browser.find_element(By.ID, "key-form")
        assert not key_form.is_displayed()
        browser.find_element(By.CSS_SELECTOR, "#recs li button[data-rate='2']").click()
        _wait(browser, lambda d: key_form.is_displayed(), "no key prompt after a 401")
        assert browser.find_element(By.ID, "status").text.startswith("401")
        browser.find_element(By.ID, "api-key").send_keys(KEY, Keys.ENTER)
        after = _wait_list(browser, unlike=first)
        assert first[0] not in after  # the retried rating went through
        assert browser.execute_script("return sessionStorage.getItem('fmrec-key')") == KEY
        # the refused write is the one console error a 401 makes
        errors = _console_errors(browser)
        assert len(errors) == 1 and "401" in errors[0]["message"]
    finally:
        server.stop()


@pytest.mark.anyio
async def test_page_and_catalog_are_served(
        small_bundle_path: Path, small_bundle: Bundle, redis_server: RedisServer) -> None:
    """/ and its files are the package's; /catalog is the served bundle's catalog."""
    settings = service_settings(bundle=small_bundle_path, redis_url=redis_server.url)
    async with serving(settings) as (_, client):
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for asset in ("/web/app.js", "/web/style.css"):
            assert (await client.get(asset)).text == (WEB_DIR / asset.split("/")[-1]).read_text()
        assert "http" not in (WEB_DIR / "app.js").read_text().replace(
            "http://www.w3.org/2000/svg", "")  # nothing fetched from elsewhere
        body = (await client.get("/catalog")).json()
    catalog = small_bundle.catalog
    assert body["model_id"] == small_bundle.model_id
    assert body["genres"] == catalog.genre_names
    assert [m["id"] for m in body["movies"]] == catalog.ids.tolist()
    row = 5
    assert body["movies"][row] == {
        "id": str(catalog.ids[row]), "title": str(catalog.titles[row]),
        "year": int(catalog.years[row]) or None, "genres": catalog.genres[row]}
    raters = {u for r in catalog.raters for u in r}
    assert len(body["users"]) == min(50, len(raters)) and set(body["users"]) <= raters
    assert body["users"][:3] == ["1", "2", "3"]
