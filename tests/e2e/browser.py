"""Headless Debian Chromium driven by selenium through /usr/bin/chromedriver (never a downloaded browser)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver",)
# STACK.md: what keeps a headless Chromium quiet, offline-safe and runnable as root.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--window-size=1440,1000",
)


def find_binary(candidates: tuple[str, ...], name: str) -> str | None:
    for path in candidates:
        if Path(path).is_file():
            return path
    return shutil.which(name)


@contextmanager
def chromium(profile_dir: Path) -> Iterator[object]:
    """A selenium WebDriver on headless Chromium with a fresh profile in ``profile_dir``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = find_binary(CHROMIUM_CANDIDATES, "chromium")
    driver_bin = find_binary(CHROMEDRIVER_CANDIDATES, "chromedriver")
    if not browser or not driver_bin:
        raise RuntimeError("chromium / chromedriver not found: run infra/ensure-test-deps.sh (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile_dir.mkdir(parents=True, exist_ok=True)
    options.add_argument(f"--user-data-dir={profile_dir}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_bin), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def wait_for_texts(driver, texts: list[str], timeout: float = 60.0) -> str:
    """Wait until every string in ``texts`` is visible on the page; return the page text.

    On timeout, raise AssertionError listing what is missing and what the page shows.
    """
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        try:
            body = page_text(driver)
        except Exception:  # the page is still (re)rendering
            body = ""
        missing = [t for t in texts if t not in body]
        if not missing:
            return body
        time.sleep(0.5)
    raise AssertionError(f"{driver.current_url}: never showed {missing!r}; the page shows:\n{body[:3000]}")


def click_text(driver, text: str, timeout: float = 30.0) -> None:
    """Click the first visible element whose own text is exactly ``text`` (a tab, a link, a toggle)."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    # The innermost element whose whole text is ``text`` (tabs wrap their label in spans).
    xpath = f"//*[normalize-space(.)='{text}'][not(*[normalize-space(.)='{text}'])]"
    while time.monotonic() < deadline:
        for element in driver.find_elements(By.XPATH, xpath):
            try:
                if element.is_displayed():
                    element.click()
                    return
            except Exception:
                continue
        time.sleep(0.5)
    raise AssertionError(f"{driver.current_url}: no clickable element with text {text!r}")


def links_to(driver, href_part: str) -> list[str]:
    """The visible texts of the links whose href contains ``href_part``."""
    from selenium.webdriver.common.by import By

    return [a.text.strip() for a in driver.find_elements(By.CSS_SELECTOR, f"a[href*='{href_part}']") if a.is_displayed()]


def click_link_to(driver, href_part: str) -> None:
    """Click the first visible link whose href contains ``href_part``."""
    from selenium.webdriver.common.by import By

    for link in driver.find_elements(By.CSS_SELECTOR, f"a[href*='{href_part}']"):
        if link.is_displayed():
            link.click()
            return
    raise AssertionError(f"{driver.current_url}: no visible link to {href_part!r}")


def row_text(driver, name: str, row_marker: str) -> str:
    """Text of the smallest element that holds the link ``name`` and the text ``row_marker`` (a list row)."""
    from selenium.webdriver.common.by import By

    xpath = f"//a[normalize-space(.)='{name}']/ancestor::*[contains(normalize-space(.), '{row_marker}')][1]"
    rows = driver.find_elements(By.XPATH, xpath)
    if not rows:
        raise AssertionError(f"{driver.current_url}: no row with a link {name!r}")
    return rows[0].text


def scroll_to_text(driver, text: str) -> None:
    """Scroll the innermost element whose text is ``text`` to the middle of the view (for the screenshot)."""
    from selenium.webdriver.common.by import By

    xpath = f"//*[normalize-space(.)='{text}'][not(*[normalize-space(.)='{text}'])]"
    for element in driver.find_elements(By.XPATH, xpath):
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        return
    raise AssertionError(f"{driver.current_url}: no element with text {text!r}")


def screenshot(driver, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path
