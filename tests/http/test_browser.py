"""A real browser on the console: headless Chromium driven by Selenium against `outpost run`.

The test setup installs Debian's chromium and chromium-driver when they are missing
(as root; `apt-get update` once if the first install fails) and skips, saying why,
only where they cannot be had. Screenshots are saved under the test's tmp dir; set
OUTPOST_SCREENSHOT_DIR to keep copies (docs/console.png comes from there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http.client import start_with_console
from tests.runtime_proc import FIXTURE_AGENTS, agent_block

CHROMIUM, DRIVER = "chromium", "chromedriver"
CONTROLLED = f"{FIXTURE_AGENTS / 'controlled.py'}:run"
NAMES = ("sensor", "uplink", "modbus")
AGENTS = (agent_block("sensor", CONTROLLED) + agent_block("uplink", CONTROLLED, kind="process")
          + agent_block("modbus", CONTROLLED, kind="process"))


def _apt_install() -> str | None:
    """Install the browser and its driver; None when done, else why not."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "chromium/chromedriver are missing and apt-get cannot run here (not root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium",
               "chromium-driver"]
    done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        return "apt-get could not install chromium chromium-driver: " + \
            (done.stderr.strip().splitlines() or ["?"])[-1]
    return None


@pytest.fixture(scope="module")
def browser_paths() -> tuple[str, str]:
    if shutil.which(CHROMIUM) is None or shutil.which(DRIVER) is None:
        why = _apt_install()
        if why is not None:
            pytest.skip(why)
    pytest.importorskip("selenium", reason="selenium is a test extra: pip install '.[test]'")
    return shutil.which(CHROMIUM), shutil.which(DRIVER)


@pytest.fixture
def open_browser(browser_paths, tmp_path: Path) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def start(javascript: bool = True, size: tuple[int, int] = (1280, 900),
              phone: bool = False):
        options = webdriver.ChromeOptions()
        options.binary_location = browser_paths[0]
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    f"--window-size={size[0]},{size[1]}",
                    f"--user-data-dir={tmp_path / f'profile-{len(drivers)}'}"):
            options.add_argument(arg)
        if phone:  # a phone's viewport and pixel ratio, as Chrome's device emulation has it
            options.add_experimental_option("mobileEmulation", {"deviceMetrics": {
                "width": size[0], "height": size[1], "pixelRatio": 2.0}})
        if not javascript:
            options.add_experimental_option(
                "prefs", {"profile.managed_default_content_settings.javascript": 2})
        driver = webdriver.Chrome(options=options, service=Service(browser_paths[1]))
        driver.set_page_load_timeout(60)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    keep = os.environ.get("OUTPOST_SCREENSHOT_DIR")
    if keep:
        shutil.copy(path, Path(keep) / name)
    return path


def cell(driver, agent: str, column: str) -> str | None:
    """A cell's text, read in one script call (live updates replace the table's rows)."""
    return driver.execute_script(
        "const c = document.querySelector(arguments[0]); return c && c.textContent.trim();",
        f'tr[data-agent="{agent}"] td[data-col="{column}"]')


def test_the_console_is_live_in_a_real_browser(tmp_path: Path, start_runtime,
                                               open_browser) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    rt, url = start_with_console(start_runtime, tmp_path, AGENTS, NAMES)

    driver = open_browser()
    driver.get(url + "/")
    assert driver.execute_script(
        "return [...document.querySelectorAll('table.agents tbody tr')]"
        ".map(r => r.dataset.agent)") == ["sensor", "uplink", "modbus"]
    wait = WebDriverWait(driver, 30, poll_frequency=0.05,
                         ignored_exceptions=[StaleElementReferenceException])
    wait.until(lambda d: d.find_element(By.ID, "live").text == "live")  # SSE connected
    # Sparklines: of heartbeat ages every agent has one (CPU is only a process agent's).
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR,
                                         '#chart-metric option[value="heartbeat"]'))
    Select(driver.find_element(By.ID, "chart-metric")).select_by_value("heartbeat")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#charts .chart canvas")) == 3)
    driver.execute_script("window.__notReloaded = true")
    assert cell(driver, "uplink", "restarts") == "0"

    with rt.client() as client:
        crashed_at = time.monotonic()
        client.call("send", agent="uplink", message="crash")
    WebDriverWait(driver, 2.0, poll_frequency=0.02).until(
        lambda d: cell(d, "uplink", "restarts") == "1")
    seen_after = time.monotonic() - crashed_at
    assert seen_after < 2.0
    assert driver.execute_script("return window.__notReloaded === true")  # no reload
    wait.until(lambda d: d.find_elements(
        By.CSS_SELECTOR, '#events li[data-type="restart"][data-agent="uplink"]'))
    wait.until(lambda d: cell(d, "uplink", "state") == "running")
    screenshot(driver, tmp_path, "console.png")

    # The events filter, without leaving the page.
    form = driver.find_element(By.ID, "event-filter")
    form.find_element(By.NAME, "type").send_keys("restart")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda d: {li.get_attribute("data-type") for li in
                          d.find_elements(By.CSS_SELECTOR, "#events li")} == {"restart"})
    assert driver.execute_script("return window.__notReloaded === true")

    # A phone: every agent still shown, nothing wider than the screen.
    phone = open_browser(size=(390, 844), phone=True)
    phone.get(url + "/")
    WebDriverWait(phone, 30).until(lambda d: d.find_element(By.ID, "live").text == "live")
    assert len(phone.find_elements(By.CSS_SELECTOR, "tr[data-agent]")) == 3
    assert phone.execute_script("return window.innerWidth") == 390
    assert phone.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(phone, tmp_path, "console-phone.png")


def test_without_javascript_the_page_is_a_plain_table(tmp_path: Path, start_runtime,
                                                      open_browser) -> None:
    from selenium.webdriver.common.by import By

    _, url = start_with_console(start_runtime, tmp_path, AGENTS, NAMES)
    driver = open_browser(javascript=False)
    driver.get(url + "/?agent=modbus")
    rows = driver.find_elements(By.CSS_SELECTOR, "table.agents tbody tr[data-agent]")
    assert len(rows) == 3 and all(r.is_displayed() for r in rows)
    states = {r.get_attribute("data-agent"):
              r.find_element(By.CSS_SELECTOR, 'td[data-col="state"]').text for r in rows}
    assert states == {"sensor": "running", "uplink": "running", "modbus": "running"}
    assert driver.find_element(By.ID, "live").text == "static page"  # no script ran
    events = driver.find_elements(By.CSS_SELECTOR, "#events li")
    assert events and {e.get_attribute("data-agent") for e in events} == {"modbus"}
    assert not driver.find_element(By.ID, "pane-charts").is_displayed()
