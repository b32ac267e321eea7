"""The web console in a real browser: Debian's headless Chromium driven by Selenium against `thorax serve`
on 127.0.0.1 with the tiny model, an API key and a folder of real radiographs for the reader study.

It checks what a user would: a wrong key gets a clear message, moving a slider changes the preview, a
job submitted from the form reaches 100 % and its gallery shows its images, and a reader study taken by
two scripted readers shows the accuracies and the kappa computed here by hand, with the timer moving on
by itself and no way back. Screenshots go to the test's folder (and to $THORAX_SCREENSHOTS when set;
$THORAX_CONSOLE_STORE serves another model store, e.g. the shipped one for the README's pictures).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.servers import gateway

pytestmark = pytest.mark.slow
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

KEY = "console-test-key"
WAIT_S = 60  # generous: the machine may be busy; every wait ends as soon as its condition holds
SECONDS_PER_IMAGE = 3  # the reader study's timer, short to keep the test quick
BROWSER, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (BROWSER and DRIVER):
    pytest.skip(
        "Chromium and chromedriver are missing: apt-get install chromium chromium-driver "
        "(scripts/install-dev.sh does)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory, data_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("study-images")
    for path in sorted((data_dir / "images").glob("*.png"))[:8]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def site(tiny_store: Path, study_folder: Path, tmp_path_factory):
    """(gateway URL, storage folder)."""
    work = tmp_path_factory.mktemp("console-gateway")
    env = {
        "THORAX_MODEL_STORE": os.environ.get("THORAX_CONSOLE_STORE", str(tiny_store)),
        "THORAX_STORAGE_DIR": str(work / "data"),
        "THORAX_ONNX_THREADS": "1", "THORAX_API_KEYS": KEY, "THORAX_STUDY_IMAGES": str(study_folder),
    }  # fmt: skip
    with gateway(env, work) as (url, _):
        yield url, work / "data"


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> list[Path]:
    folders = [tmp_path_factory.mktemp("screenshots")]
    if os.environ.get("THORAX_SCREENSHOTS"):
        folders.append(Path(os.environ["THORAX_SCREENSHOTS"]))
        folders[-1].mkdir(parents=True, exist_ok=True)
    return folders


def screenshot(driver, shots: list[Path], name: str) -> None:
    for folder in shots:
        driver.save_screenshot(str(folder / f"{name}.png"))


def wait(driver, condition, what: str):
    """`condition(driver)` once truthy; pages that poll redraw their elements, so a stale one is a retry."""
    waiting = WebDriverWait(driver, WAIT_S, ignored_exceptions=(StaleElementReferenceException,))
    return waiting.until(lambda d: condition(d), message=f"waited for {what}")


def text(driver, css: str) -> str | None:
    """The text of the first element matching `css`, read in one step in the page (None if none)."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e && e.textContent", css
    )


def attribute(driver, css: str, name: str) -> str | None:
    script = "const e = document.querySelector(arguments[0]); return e && e.getAttribute(arguments[1])"
    return driver.execute_script(script, css, name)


def find(driver, css: str):
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0] if found else None


def open_console(driver, url: str, hash_: str = "#/models") -> None:
    """The console with the key entered, as a user would, on the page `hash_`."""
    driver.get(f"{url}/console/{hash_}")
    if driver.execute_script("return sessionStorage.getItem('thorax.apiKey')") != KEY:
        driver.find_element(By.ID, "key-input").send_keys(KEY, Keys.ENTER)
        accepted = lambda d: "accepted" in d.find_element(By.ID, "key-message").text  # noqa: E731
        wait(driver, accepted, "the key to be accepted")


def test_a_wrong_key_gets_a_clear_message(site, browser, shots) -> None:
    url, _ = site
    browser.get(f"{url}/console/#/models")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    message = lambda d: d.find_element(By.ID, "key-message").text  # noqa: E731
    wait(browser, lambda d: "needs an API key" in message(d), "the missing-key message")
    browser.find_element(By.ID, "key-input").send_keys("not-the-key", Keys.ENTER)
    wait(browser, lambda d: "refused this API key" in message(d), "the wrong-key message")
    assert "valid API key" in message(browser)
    screenshot(browser, shots, "console-wrong-key")
    browser.find_element(By.ID, "key-input").send_keys(KEY, Keys.ENTER)
    wait(browser, lambda d: "accepted" in message(d), "the key to be accepted")
    card = wait(browser, lambda d: find(d, "a.card"), "the model list")
    browser.get(card.get_attribute("href"))  # the key is kept for the session
    wait(browser, lambda d: "Training data" in d.find_element(By.ID, "view").text, "the model page")
    wait(browser, lambda d: d.execute_script("return [...document.images].some(i => i.naturalWidth > 0)"),
         "the model's figures")  # fmt: skip


def test_moving_a_slider_changes_the_preview(site, browser, shots) -> None:
    url, _ = site
    open_console(browser, url, "#/studio")
    digest = lambda d: attribute(d, "#preview", "data-digest")  # noqa: E731
    first = wait(browser, digest, "the first preview")
    slider = wait(browser, lambda d: find(d, "input[data-label='Cardiomegaly']"), "the sliders")
    slider.send_keys(Keys.END)  # to 1, as a user drags it
    wait(browser, lambda d: digest(d) not in (None, first), "the preview to change")
    assert browser.execute_script("return document.getElementById('preview').naturalWidth") > 0
    browser.find_element(By.ID, "transitions").click()
    wait(browser, lambda d: d.execute_script("return document.getElementById('picture').naturalWidth") > 0,
         "the transitions picture")  # fmt: skip
    screenshot(browser, shots, "console-studio")


def test_a_job_from_the_form_reaches_100_percent_and_shows_its_images(site, browser, shots) -> None:
    url, _ = site
    open_console(browser, url, "#/studio")
    slider = wait(browser, lambda d: find(d, "input[data-label='Effusion']"), "the sliders")
    slider.send_keys(Keys.END)
    count = browser.find_element(By.ID, "like-count")
    count.clear()
    count.send_keys("12")
    browser.find_element(By.ID, "like-this").click()  # "Generate 12 like this": the form, filled in

    form = wait(browser, lambda d: find(d, "#job-form"), "the job form")
    assert form.find_element(By.NAME, "count").get_attribute("value") == "12"
    assert form.find_element(By.CSS_SELECTOR, "input[data-label='Effusion']").get_attribute("value") == "1"
    shard_size = form.find_element(By.NAME, "shard_size")
    shard_size.clear()
    shard_size.send_keys("12")
    browser.find_element(By.ID, "dry-run").click()
    wait(browser, lambda d: find(d, "[data-estimate='shards']"), "the dry run's estimate")
    assert browser.find_element(By.CSS_SELECTOR, "[data-estimate='shards']").text.startswith("1 of")

    browser.find_element(By.ID, "submit-job").click()
    wait(browser, lambda d: "#/jobs/" in d.current_url, "the job's page")
    job_id = browser.current_url.rsplit("/", 1)[1]
    browser.get(f"{url}/console/#/jobs")
    row = f"tr[data-job='{job_id}'] .progress span"
    wait(browser, lambda d: text(d, row) == "100 %", "the job at 100 %")
    screenshot(browser, shots, "console-jobs")

    browser.execute_script("document.querySelector(arguments[0]).click()", f"tr[data-job='{job_id}'] a")
    loaded = "return [...document.querySelectorAll('#gallery img')].filter(i => i.naturalWidth > 0).length"
    wait(browser, lambda d: d.execute_script(loaded) == 12, "the gallery's 12 images")
    titles = [f.get_attribute("title") for f in browser.find_elements(By.CSS_SELECTOR, "#gallery figure")]
    assert len(titles) == 12 and all("Effusion 1.00" in t for t in titles)
    chart = browser.find_element(By.ID, "label-chart").text
    assert "Effusion\n12" in chart
    assert browser.find_elements(By.CSS_SELECTOR, "#shards a.download")
    screenshot(browser, shots, "console-job")


def test_a_reader_study_taken_by_two_scripted_readers(site, browser, shots) -> None:
    url, storage = site
    open_console(browser, url, "#/studies")
    form = wait(browser, lambda d: find(d, "#study-form"), "the study form")
    for name, value in [("name", "Pilot"), ("resolutions", "16, 8"), ("per_block", "2"),
                        ("seconds_per_image", str(SECONDS_PER_IMAGE)), ("seed", "7")]:  # fmt: skip
        box = form.find_element(By.NAME, name)
        box.clear()
        box.send_keys(value)
    form.find_element(By.NAME, "readers").send_keys("ana, radiologists\nben, engineers")
    browser.find_element(By.ID, "create-study").click()
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "a.reader-link")) == 2, "the reader links")
    links = {a.get_attribute("data-reader"): a.get_attribute("href")
             for a in browser.find_elements(By.CSS_SELECTOR, "a.reader-link")}  # fmt: skip
    study_path = next(storage.rglob("study.json"))
    record = json.loads(study_path.read_text())
    truth = [item["kind"] for block in record["blocks"] for item in block["items"]]
    assert [b["resolution"] for b in record["blocks"]] == [8, 16] and len(truth) == 8

    flip = {"real": "generated", "generated": "real"}
    ana = [flip[t] if i == 2 else t for i, t in enumerate(truth)]  # right on all but image 3
    ben = ["real"] * 7 + [None]  # calls everything real; lets the last one time out
    shown_sizes = take_study(browser, links["ana"], ana, shots, check_no_way_back=True)
    take_study(browser, links["ben"], ben, shots)
    assert len(set(shown_sizes)) == 1  # every image is shown at the same size, whatever its resolution

    # by hand: accuracy is the share right (a timeout is wrong); Fleiss' kappa over the 7 images both
    # answered, two raters: P_i = 1 where they agree, else 0; P_e = the sum of squared category shares
    right = lambda answers: sum(a == t for a, t in zip(answers, truth, strict=True)) / 8  # noqa: E731
    both = [(a, b) for a, b in zip(ana, ben, strict=True) if b is not None]
    p_bar = sum(a == b for a, b in both) / len(both)
    calls = [c for pair in both for c in pair]
    p_e = (calls.count("generated") / len(calls)) ** 2 + (calls.count("real") / len(calls)) ** 2
    kappa = (p_bar - p_e) / (1 - p_e)

    open_console(browser, url, f"#/studies/{record['id']}")

    def cell(d, row: str, col: str) -> str:
        return text(d, f"tr[data-row='{row}'] [data-col='{col}']")

    wait(browser, lambda d: find(d, "tr[data-row='group:all readers:all']"), "the results")
    assert cell(browser, "reader:ana:all", "accuracy") == f"{100 * right(ana):.1f} %"
    assert cell(browser, "reader:ben:all", "accuracy") == f"{100 * right(ben):.1f} %"
    real_called_real = sum(t == "real" and b == "real" for t, b in zip(truth, ben, strict=True))
    assert cell(browser, "reader:ben:all", "specificity") == f"{100 * real_called_real / 4:.1f} %"
    assert cell(browser, "reader:ben:all", "sensitivity") == "0.0 %"  # no generated image called generated
    assert cell(browser, "group:all readers:all", "kappa") == f"{kappa:.3f} (7 images)"
    screenshot(browser, shots, "console-study-results")


def take_study(driver, link: str, answers: list[str | None], shots, check_no_way_back: bool = False) -> set:
    """One reader through the study: R or F for each image, nothing where the answer is None (the timer
    then moves on). Returns the sizes the images were shown at."""
    driver.get(link)
    wait(driver, lambda d: find(d, "#begin"), "the study's start page").click()
    sizes = set()
    for position, answer in enumerate(answers):
        shown = f"#reader-image[data-position='{position}']"
        image = wait(driver, lambda d, css=shown: find(d, css), f"image {position + 1}")
        sizes.add((image.size["width"], image.size["height"]))
        if answer is None:  # the time runs out; the page moves on by itself
            wait(driver, lambda d, css=shown: find(d, css) is None, f"image {position + 1} to time out")
            continue
        driver.find_element(By.TAG_NAME, "body").send_keys("r" if answer == "real" else "f")
        if position == 0:
            screenshot(driver, shots, "console-reader")
        if check_no_way_back and position == 1:
            wait(driver, lambda d: find(d, "#reader-image[data-position='2']"), "image 3")
            driver.back()  # leave, then come back: the page goes on at image 3
            driver.forward()
            wait(driver, lambda d: find(d, "#reader-image[data-position='2']"), "image 3 again")
            refused = driver.execute_async_script(
                "const done = arguments[0];"
                "fetch('/v1/read/' + location.hash.slice(1) + '/answers', {method: 'POST',"
                " headers: {'Content-Type': 'application/json'},"
                " body: JSON.stringify({position: 0, image: 'x', answer: 'real'})})"
                ".then(r => done(r.status));"
            )
            assert refused == 409  # an answered image stays closed
    wait(driver, lambda d: find(d, "#reader-done"), "the end of the study")
    return sizes
