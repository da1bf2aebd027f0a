"""The demo page in headless Chromium: pick an image and a model (or let the server pick one),
see the reconstruction, the bytes, the bpp and the classes. Skipped, with the reason, only
where no browser can be had (.ci/run installs Debian's chromium and chromium-driver)."""

from __future__ import annotations

import shutil

import pytest

import tica
from tica.image import read_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not (CHROMIUM and DRIVER):
        pytest.skip("no chromium/chromedriver on this machine (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_demo_page_encodes_classifies_and_decodes(live_server, browser, tmp_path, cifar_samples):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    data, label = cifar_samples[16]                      # a made-up "ship"
    image = tmp_path / "ship.jpg"
    image.write_bytes(data)
    browser.get(live_server + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "quality")).options) >= 3)
    Select(browser.find_element(By.ID, "quality")).select_by_visible_text("tica-cifar q1")
    browser.find_element(By.ID, "file").send_keys(str(image))
    browser.find_element(By.ID, "run").click()
    wait.until(lambda d: d.find_element(By.ID, "stats").get_attribute("data-bytes")
               or d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text == ""
    expected = tica.compress(tica.load("tica-cifar"), read_image(data), quality=1)
    assert int(browser.find_element(By.ID, "stats").get_attribute("data-bytes")) == len(expected)
    stats = browser.find_element(By.ID, "stats").text
    assert f"{len(expected)} bytes" in stats and "bpp" in stats and "tica-cifar q1" in stats
    assert f"a lossless PNG: {tica.api.png_bytes(read_image(data))} bytes" in stats
    rows = browser.find_elements(By.CSS_SELECTOR, "#classes tr")
    assert len(rows) == 5
    local_top = tica.classify(tica.load("tica-cifar"), expected, k=1)[0][0].label
    assert rows[0].text.split()[0] == local_top
    decoded = browser.find_element(By.ID, "decoded")
    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", decoded) > 0)
    assert browser.execute_script("return arguments[0].naturalWidth", decoded) == 32
    assert "decoded from" in browser.find_element(By.ID, "decoded-caption").text


def test_demo_page_picks_the_model_for_the_image(live_server, browser, tmp_path, photo_path):
    """The default entry lets the server pick (tica.api.choose_model): a photograph goes to
    tica-photo; a codec-only model shows its reconstruction and says it has no classes."""
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    image = tmp_path / "photo.png"
    with Image.open(photo_path) as img:
        img.crop((0, 0, 256, 192)).save(image)
    browser.get(live_server + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "quality")).options) >= 3)
    chosen = Select(browser.find_element(By.ID, "quality")).first_selected_option.text
    assert chosen.startswith("auto: tica-cifar up to 64 px a side, else tica-photo")
    browser.find_element(By.ID, "file").send_keys(str(image))
    browser.find_element(By.ID, "run").click()
    wait.until(lambda d: d.find_element(By.ID, "stats").get_attribute("data-bytes")
               or d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text == ""
    expected = tica.compress(tica.load("tica-photo"), read_image(image.read_bytes()))
    assert int(browser.find_element(By.ID, "stats").get_attribute("data-bytes")) == len(expected)
    label = tica.describe(tica.load("tica-photo"))
    assert browser.find_element(By.ID, "stats").text.startswith(label + ":")
    if not tica.api.can_classify(tica.load("tica-photo")):         # the shipped codec-only model
        assert "no classes" in browser.find_element(By.ID, "classes").text
    decoded = browser.find_element(By.ID, "decoded")
    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", decoded) > 0)
    assert browser.execute_script("return arguments[0].naturalWidth", decoded) == 256
