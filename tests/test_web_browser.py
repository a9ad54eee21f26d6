"""The interactive page end to end in headless Chromium (Debian's chromium + chromium-driver,
which .ci/run installs; nothing is downloaded): load an image, draw an arrow with the mouse,
get the flow back, and check on a screenshot that the page shows it."""
import os

import cv2
import numpy as np
import pytest

from cmp_tf import flow as flow_lib
from tests.helpers import CHROMIUM
from tests.helpers import DRIVER
from tests.helpers import RED_SQUARE
from tests.helpers import chromium
from tests.helpers import drag
from tests.helpers import red_square_png
from tests.helpers import serving

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
    "(apt-get install chromium chromium-driver; .ci/run does)")]
SIZE = 128
TIMEOUT = 120  # s: a cold model on a busy 2-core machine


@pytest.fixture(scope="module")
def page(propagator):
    """The page's URL, served from a thread on a free localhost port."""
    from cmp_tf.apps.web import server as server_lib

    with serving(server_lib.make_server(propagator, port=0)) as httpd:
        yield "http://{}:{}/".format(*httpd.server_address[:2])


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def _shown(driver, element):
    """What the screen shows of `element`: the screenshot cropped to it, RGB."""
    shot = cv2.imdecode(np.frombuffer(driver.get_screenshot_as_png(), np.uint8),
                        cv2.IMREAD_COLOR)
    box = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return [r.left, r.top, r.width, r.height, window.devicePixelRatio];", element)
    left, top, width, height, ratio = box
    x0, y0 = round((left + 1) * ratio), round((top + 1) * ratio)  # inside the 1 px border
    x1, y1 = round((left + width - 1) * ratio), round((top + height - 1) * ratio)
    return cv2.cvtColor(shot[y0:y1, x0:x1], cv2.COLOR_BGR2RGB)


def _open_with_scene(tmp_path, page, browser):
    """Loads the page, gives it a generated scene; returns (scene, canvas, waiter)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = red_square_png(tmp_path / "scene.png", SIZE)
    browser.get(page)
    wait = WebDriverWait(browser, TIMEOUT)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#refine option"))
    browser.find_element(By.ID, "file").send_keys(str(tmp_path / "scene.png"))
    canvas = browser.find_element(By.ID, "canvas")
    wait.until(lambda d: canvas.get_attribute("data-loaded") == "true")
    return image, canvas, wait


def _wait_for_result(browser, wait, element):
    """Waits until `element` (an <img>) shows a result; fails with the page's error if any."""
    from selenium.webdriver.common.by import By

    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth;", element) > 0
               or "error" in d.find_element(By.ID, "status").get_attribute("class"))
    assert "error" not in browser.find_element(By.ID, "status").get_attribute("class"), \
        browser.find_element(By.ID, "status").text


def test_load_draw_an_arrow_and_see_the_flow(tmp_path, page, browser, propagator):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready

    image, canvas, wait = _open_with_scene(tmp_path, page, browser)
    assert (canvas.size["width"], canvas.size["height"]) == (SIZE + 2, SIZE + 2)  # + border

    drag(browser, canvas, (64, 64), (84, 54))  # the square moves 20 px right, 10 up
    drag(browser, canvas, (10, 10), (10, 10))  # a click: a pinned corner
    arrows = browser.execute_script("return state.arrows;")
    assert len(arrows) == 2 and arrows[1][2:] == [0, 0]
    # The start to a pixel (the layout may put the canvas at a fractional offset), the
    # motion exactly.
    assert np.abs(np.subtract(arrows[0][:2], (64, 64))).max() <= 1 and arrows[0][2:] == [20, -10]

    browser.find_element(By.ID, "animate").click()
    flow_image = browser.find_element(By.ID, "flow")
    _wait_for_result(browser, wait, flow_image)
    wait.until(ready.visibility_of_element_located((By.ID, "animation")))

    shown = _shown(browser, flow_image)
    assert shown.shape[:2] == (SIZE, SIZE)
    points = np.array([a[:2] for a in arrows], np.float32)
    vectors = np.array([a[2:] for a in arrows], np.float32)
    expected = flow_lib.flow_to_color(propagator.propagate(image, points, vectors))
    assert np.abs(shown.astype(int) - expected).mean() < 3  # the page shows this flow
    saturation = cv2.cvtColor(shown, cv2.COLOR_RGB2HSV)[..., 1]
    assert saturation[64, 64] > 100 and saturation[5, 5] < 30  # moving: colour; pinned: white
    path = os.environ.get("CMP_TF_SCREENSHOT")  # keep the screenshot for a look, if asked
    if path:
        browser.save_screenshot(path)


def test_clicks_give_a_mask_on_the_page(tmp_path, page, browser):
    from selenium.webdriver.common.by import By

    image, canvas, wait = _open_with_scene(tmp_path, page, browser)
    browser.find_element(By.CSS_SELECTOR, "input[value=positive]").click()
    for point in ((50, 50), (78, 78), (50, 78), (78, 50)):
        drag(browser, canvas, point, point)
    browser.find_element(By.CSS_SELECTOR, "input[value=negative]").click()
    for point in ((30, 30), (98, 98), (30, 98), (98, 30), (30, 64), (98, 64), (64, 30),
                  (64, 98)):
        drag(browser, canvas, point, point)
    browser.find_element(By.CSS_SELECTOR, "#refine option[value=grabcut]").click()
    browser.find_element(By.ID, "annotate").click()
    mask_image = browser.find_element(By.ID, "mask")
    _wait_for_result(browser, wait, mask_image)
    shown = _shown(browser, mask_image).astype(int)
    # The overlay tints the object: the square's pixels change, the background's do not.
    changed = np.abs(shown - image).sum(-1) > 30
    square = np.zeros((SIZE, SIZE), bool)
    square[RED_SQUARE, RED_SQUARE] = True
    assert changed[square].mean() > 0.9 and changed[~square].mean() < 0.05


def test_an_image_over_the_servers_limit_is_named_before_it_is_sent(tmp_path, browser,
                                                                     propagator):
    """The server cuts an upload over max_bytes off mid-way, which the browser reported as a
    network failure ("Failed to fetch"): the page names the limit instead."""
    from selenium.webdriver.common.by import By

    from cmp_tf.apps.web import server as server_lib

    with serving(server_lib.make_server(propagator, port=0, max_bytes=1000)) as httpd:
        small_page = "http://{}:{}/".format(*httpd.server_address[:2])
        _, canvas, wait = _open_with_scene(tmp_path, small_page, browser)
        wait.until(lambda d: d.execute_script("return state.info && state.info.max_bytes;")
                   == 1000)
        drag(browser, canvas, (64, 64), (84, 54))
        browser.find_element(By.ID, "animate").click()
        status = browser.find_element(By.ID, "status")
        wait.until(lambda d: "error" in status.get_attribute("class"))
        assert "the server takes at most 1 KB: load a smaller image" in status.text, \
            status.text
        assert browser.find_element(By.ID, "animate").is_enabled()


class _StillPropagator:
    """No model: zero flow, for what the page does around the API."""
    path, format = "still", "none"

    def propagate(self, image, points, vectors):
        return np.zeros(image.shape[:2] + (2,), np.float32)

    def propagate_batch(self, image, guidance):
        return np.zeros((len(guidance),) + image.shape[:2] + (2,), np.float32)


@pytest.fixture(scope="module")
def still_page():
    from cmp_tf.apps.web import server as server_lib

    with serving(server_lib.make_server(_StillPropagator(), port=0)) as httpd:
        yield "http://{}:{}/".format(*httpd.server_address[:2])


def _load(browser, page_url, path, size):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    cv2.imwrite(str(path), np.zeros(size[::-1] + (3,), np.uint8))
    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, TIMEOUT).until(lambda d: d.execute_script(
        "return canvas.width === arguments[0] && canvas.height === arguments[1];", *size))


@pytest.mark.parametrize("size", [(128, 96), (1280, 960)])  # shown at 1:1, and at half size
def test_the_mouse_is_read_at_pixel_centres_inside_the_border(tmp_path, still_page, browser,
                                                              size):
    """The pointer over the middle of image pixel (x, y) reads (x, y), whatever size the canvas
    is shown at: from the border box it read (1, 1) for (0, 0) at 1:1, and (2, 2) and
    (1278, 958) for the corners of a 1280 x 960 photo shown at 640 x 480."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(still_page)
    WebDriverWait(browser, TIMEOUT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#refine option"))
    _load(browser, still_page, tmp_path / "photo.png", size)
    width, height = size
    pixels = [[0, 0], [10, 20], [width // 2, height // 2], [width - 1, height - 1]]
    read = browser.execute_script(
        "const c = canvas, box = c.getBoundingClientRect();"
        "return arguments[0].map(([x, y]) => toImage({"
        "  clientX: box.left + c.clientLeft + (x + 0.5) * c.clientWidth / c.width,"
        "  clientY: box.top + c.clientTop + (y + 0.5) * c.clientHeight / c.height}))"
        ".map((p) => [p.x, p.y]);", pixels)
    assert read == pixels


def test_a_new_image_drops_the_previous_images_results(tmp_path, still_page, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, TIMEOUT)
    browser.get(still_page)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#refine option"))
    _load(browser, still_page, tmp_path / "first.png", (64, 48))
    browser.execute_script("state.arrows = [[10, 10, 5, 0]];")
    browser.find_element(By.ID, "animate").click()
    flow = browser.find_element(By.ID, "flow")
    _wait_for_result(browser, wait, flow)
    _load(browser, still_page, tmp_path / "second.png", (40, 30))
    assert browser.execute_script(
        "return ['flow', 'animation', 'mask'].filter((id) => $(id).getAttribute('src'));") == []


@pytest.mark.parametrize("typed", ["", "1", "100", "2.5x"])
def test_frames_the_server_refuses_are_named_on_the_page(tmp_path, still_page, browser, typed):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(still_page)
    WebDriverWait(browser, TIMEOUT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#refine option"))
    _load(browser, still_page, tmp_path / "photo.png", (64, 48))
    browser.execute_script("state.arrows = [[10, 10, 5, 0]]; $('frames').value = arguments[0];"
                           "window.sent = 0; const f = window.fetch;"
                           "window.fetch = (...a) => { window.sent += 1; return f(...a); };",
                           typed)
    browser.find_element(By.ID, "animate").click()
    status = browser.find_element(By.ID, "status")
    assert "Frames must be a whole number from 2 to 64" in status.text
    assert browser.execute_script("return window.sent;") == 0
