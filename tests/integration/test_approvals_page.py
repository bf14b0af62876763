"""The approvals web page in headless Chromium: a pending request, approved with a click."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from test_approvals import WAIT, admin, engineer_execute, exists, order, pending, token

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def hold_and_show(browser: webdriver.Chrome, gateway: RunningGateway, sql: str) -> tuple[Any, str, Any]:
    """The engineer's `sql`, held; the page signed in with the dba's token, showing its row."""
    client = engineer_execute(gateway, sql)
    request_id = pending(gateway, sql)["id"]
    browser.get(f"{admin(gateway)}/approvals/ui")
    browser.find_element(By.ID, "token").send_keys(token(gateway, "dba"))
    browser.find_element(By.ID, "use-token").click()
    return client, request_id, WebDriverWait(browser, WAIT).until(
        expected_conditions.presence_of_element_located((By.ID, f"request-{request_id}")))


def test_the_page_lists_a_request_and_approves_it_with_a_click(gateway: RunningGateway, postgres: PostgresServer,
                                                               browser: webdriver.Chrome) -> None:
    with order(postgres) as number:
        sql = f"DELETE FROM orders WHERE id = {number}"
        client, request_id, row = hold_and_show(browser, gateway, sql)
        assert sql in row.text and gateway.identities["engineer"].user in row.text
        assert "roles.engineering.approval[1]" in row.text
        assert not browser.get_cookies()  # the token is no cookie: nothing for another site to ride on
        browser.find_element(By.ID, f"approve-{request_id}").click()
        assert client.join() == "DELETE 1"
        assert not exists(postgres, number)
        wait = WebDriverWait(browser, WAIT)
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "status"), "approved"))
        wait.until(expected_conditions.invisibility_of_element_located((By.ID, f"request-{request_id}")))


def test_the_page_shows_sql_as_text_not_html(gateway: RunningGateway, postgres: PostgresServer,
                                             browser: webdriver.Chrome) -> None:
    with order(postgres) as number:
        sql = f"DELETE FROM orders WHERE id = {number} AND status <> '<img src=x onerror=alert(1)>'"
        client, request_id, row = hold_and_show(browser, gateway, sql)
        assert "<img src=x onerror=alert(1)>" in row.text
        assert not row.find_elements(By.TAG_NAME, "img")
        browser.find_element(By.ID, f"reason-{request_id}").send_keys("not today")
        browser.find_element(By.ID, f"deny-{request_id}").click()
        client.join()
        assert "denied by" in str(client.error) and "not today" in str(client.error)
        assert exists(postgres, number)


def test_the_page_shows_invisible_and_reordering_characters_as_escapes(gateway: RunningGateway,
                                                                       postgres: PostgresServer,
                                                                       browser: webdriver.Chrome) -> None:
    with order(postgres) as number:
        # A right-to-left override would show the comment's text reversed, over what follows it.
        sql = f"DELETE FROM orders WHERE id = {number} /* \u202e1 TCELES \u200b*/"
        client, request_id, row = hold_and_show(browser, gateway, sql)
        assert f"DELETE FROM orders WHERE id = {number} /* \\u202e1 TCELES \\u200b*/" in row.text
        assert "\u202e" not in row.text and "\u200b" not in row.text
        browser.find_element(By.ID, f"deny-{request_id}").click()
        client.join()
        assert exists(postgres, number)
