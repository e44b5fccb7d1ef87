"""The search page in a real browser (Debian's Chromium through Selenium and chromium-driver; nothing downloaded):
type a query, press Enter, see the ranked moments grouped per video; a player starts at its moment; a click on a
frame of the strip seeks the player to that frame's time and it plays, an MPEG-TS moment too (converted); "More like
this"; the keyboard; a phone's width. And the static page of ``search --html`` gets the same frame buttons."""

from __future__ import annotations

import os
import shutil
import time
import urllib.parse
from pathlib import Path

import pytest

from conftest import require_or_skip
from serving import LONG_SECONDS

pytest.importorskip("fastapi", reason="the serve extra (pip install 'xclip-lightning[serve]')")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    require_or_skip(CHROMIUM is not None and DRIVER is not None, "Chromium and chromium-driver (apt-get install "
                    "chromium chromium-driver)")  # fmt: skip
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (a dev dependency)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--autoplay-policy=no-user-gesture-required",
        "--mute-audio",
        "--window-size=1100,900",
        f"--user-data-dir={tmp_path_factory.mktemp('profile')}",
    ):
        options.add_argument(flag)  # fmt: skip
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait(condition, timeout: float = 20.0, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def player_state(driver, article) -> dict:
    return driver.execute_script(
        "const v = arguments[0].querySelector('video');"
        "return {t: v.currentTime, ready: v.readyState, error: v.error && v.error.code, paused: v.paused};",
        article,
    )


def api(server, path: str) -> dict:
    return server.json(path)[1]


def test_a_query_typed_and_entered_shows_the_moments_grouped_per_video(world, server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base = f"http://{server.host}:{server.port}/"
    browser.get(base)
    box = browser.find_element(By.ID, "q")
    assert browser.switch_to.active_element == box  # autofocus: type at once
    query = world["captions"][2]
    box.send_keys(query, Keys.ENTER)
    wait(lambda: browser.find_elements(By.CSS_SELECTOR, "article.moment"), what="results")
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(browser.current_url).query) == {"q": [query]}
    hits = api(server, "/api/search?" + urllib.parse.urlencode({"q": query, "k": 30}))["hits"]
    groups: dict[str, list[str]] = {}
    for hit in hits:  # grouped per video in the order of each video's best moment, ranked inside
        groups.setdefault(hit["path"], []).append(hit["id"])
    shown = [a.get_attribute("data-id") for a in browser.find_elements(By.CSS_SELECTOR, "article.moment")]
    assert shown == [i for ids in groups.values() for i in ids]
    headings = [
        s.find_element(By.CSS_SELECTOR, ".path").text for s in browser.find_elements(By.CSS_SELECTOR, "section.video")
    ]
    assert headings == list(groups)
    first = browser.find_elements(By.CSS_SELECTOR, "article.moment")[0]
    assert "0:00.0-" in first.find_element(By.CSS_SELECTOR, ".time").text  # the terminal's time format
    assert f"score {hits[0]['score']:.2f}" in first.text
    browser.refresh()  # the URL is the result list: reloadable and shareable
    wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, "article.moment")) == len(shown), what="reload")
    assert browser.find_element(By.ID, "q").get_attribute("value") == query


def test_players_start_at_their_moment_and_frames_seek_and_play(world, server, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"http://{server.host}:{server.port}/?" + urllib.parse.urlencode({"q": world["captions"][0]}))
    wait(lambda: browser.find_elements(By.CSS_SELECTOR, "article.moment"), what="results")
    hits = {h["id"]: h for h in api(server, "/api/search?" + urllib.parse.urlencode(
        {"q": world["captions"][0], "k": 30}))["hits"]}  # fmt: skip
    articles = {a.get_attribute("data-id"): a for a in browser.find_elements(By.CSS_SELECTOR, "article.moment")}
    late = next(i for i, h in hits.items() if h["path"].endswith("long take.mp4") and h["start"] > 0)
    assert hits[late]["start"] == LONG_SECONDS / 2
    for moment in (late, next(i for i, h in hits.items() if h["path"].endswith(".ts"))):
        hit, article = hits[moment], articles[moment]
        browser.execute_script("arguments[0].scrollIntoView()", article)
        state = wait(lambda a=article: (s := player_state(browser, a))["ready"] >= 1 and s, what="metadata")
        assert state["error"] is None
        assert abs(state["t"] - (hit["start"] - hit["media_start"])) < 0.3, (hit, state)  # starts at the moment
        frames = article.find_elements(By.CSS_SELECTOR, ".frames button")
        assert len(frames) == len(hit["timestamps"])
        frames[2].click()
        target = hit["timestamps"][2] - hit["media_start"]
        state = wait(lambda a=article: (s := player_state(browser, a))["ready"] >= 2 and s, what="frames to play")
        assert state["error"] is None and abs(state["t"] - target) < 0.5, (hit, state)
        wait(lambda a=article, t=target: player_state(browser, a)["t"] > t + 0.2, what="the player to play")
        assert hit["media_converted"] == hit["path"].endswith(".ts")


def test_more_like_this_the_keyboard_and_a_phone(world, server, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"http://{server.host}:{server.port}/?" + urllib.parse.urlencode({"q": world["captions"][1]}))
    first = wait(lambda: browser.find_elements(By.CSS_SELECTOR, "article.moment"), what="results")[0]
    chosen = first.get_attribute("data-id")
    first.find_element(By.CSS_SELECTOR, "button.like").click()
    wait(lambda: "like=" in browser.current_url, what="the like URL")
    expected = [h["id"] for h in api(server, f"/api/similar?id={chosen}&k=30")["hits"]]
    wait(lambda: {a.get_attribute("data-id") for a in browser.find_elements(By.CSS_SELECTOR, "article.moment")}
         == set(expected), what="similar moments")  # fmt: skip
    assert chosen not in expected and "moments like" in browser.find_element(By.ID, "status").text
    browser.find_element(By.TAG_NAME, "body").send_keys("/")  # "/" goes to the search box
    assert browser.switch_to.active_element.get_attribute("id") == "q"
    browser.back()  # history: back to the text query
    wait(lambda: "q=" in browser.current_url and "like=" not in browser.current_url, what="back")
    browser.set_window_size(390, 844)  # a phone
    try:
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1
        if os.environ.get("XCLIP_SCREENSHOTS"):  # docs/serve.png is made this way
            browser.set_window_size(1100, 900)
            browser.save_screenshot(str(Path(os.environ["XCLIP_SCREENSHOTS"]) / "serve.png"))
    finally:
        browser.set_window_size(1100, 900)


def test_an_error_is_shown_on_the_page(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"http://{server.host}:{server.port}/?like=0123456789abcdef")
    status = wait(lambda: browser.find_element(By.ID, "status").text.startswith("no indexed") and
                  browser.find_element(By.ID, "status"), what="the error")  # fmt: skip
    assert status.get_attribute("class") == "error"


def test_the_static_page_frames_seek_its_players(world, browser, tmp_path):
    from selenium.webdriver.common.by import By

    from xclip_lightning.cli import main

    page = tmp_path / "results.html"
    main(["search", "--index", str(world["index"]), world["captions"][0], "--top-k", "10", "--html", str(page)])
    text = page.read_text()
    assert "TS does not play in a browser" in text  # the MPEG-TS capture: a note, not a dead player
    browser.get(page.as_uri())
    items = browser.find_elements(By.CSS_SELECTOR, "li.hit")
    assert len(items) == 7 and len(browser.find_elements(By.TAG_NAME, "video")) == 6
    item = next(i for i in items if i.find_elements(By.TAG_NAME, "video"))
    buttons = item.find_elements(By.CSS_SELECTOR, ".frames button")
    buttons[1].click()
    target = float(buttons[1].get_attribute("data-time"))
    state = wait(lambda: (s := player_state(browser, item))["ready"] >= 2 and s, what="the static player")
    assert state["error"] is None and abs(state["t"] - target) < 0.5
    link = item.find_element(By.CSS_SELECTOR, "a").get_attribute("href")  # the file, linked
    assert urllib.parse.unquote(link).endswith(item.find_element(By.TAG_NAME, "strong").text)
