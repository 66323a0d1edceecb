"""The live web view in a real browser: Debian's Chromium, headless, driven by Playwright.

The page is served by the server's HTTP listener and talks Connect to it; the runs are
made and moved by the Python client over gRPC, so what the browser shows went through
the server's WatchRuns stream. Each step waits for what the page shows (Playwright's
`expect`, with a generous timeout that only guards against a hang); nothing sleeps.

Needs Chromium at /usr/bin/chromium (RUNCONTROL_CHROMIUM names another): `make test`
installs Debian's package when it is missing. A missing browser fails the test, it
never skips it. Playwright's own browser downloads are not used.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from _security import ADMIN_TOKEN, READER_TOKEN, write_tokens
from _streams import until
from playwright.async_api import Browser, Locator, Page, async_playwright, expect

from runcontrol import AsyncClient, RunStatus
from runcontrol_server.app import RunControlServer
from runcontrol_server.config import Settings

CHROMIUM = os.environ.get("RUNCONTROL_CHROMIUM", "/usr/bin/chromium")
# Headless, and quiet: without the background-networking switches Chromium keeps
# trying to reach Google's services, which on a machine without a network only costs.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Guards against a hang only; every step normally takes milliseconds (reconnecting
# after a restart: the page's backoff, at most 4 s).
WAIT_MS = 20_000
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def chromium() -> str:
    """The browser binary; its absence fails the test (never a skip)."""
    assert Path(CHROMIUM).exists(), (
        f"no Chromium at {CHROMIUM}: `make test` installs it (apt-get install chromium), "
        "or set RUNCONTROL_CHROMIUM to a Chromium or Chrome binary"
    )
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        # Playwright gives each launch a fresh temporary profile (user data dir).
        launched = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@asynccontextmanager
async def server(
    settings: Settings, http_listen: str = "127.0.0.1:0"
) -> AsyncIterator[RunControlServer]:
    running = RunControlServer(
        dataclasses.replace(settings, listen="127.0.0.1:0", http_listen=http_listen)
    )
    await running.start()
    try:
        yield running
    finally:
        await running.stop(grace=0)


async def open_page(browser: Browser, address: str | None) -> Page:
    assert address is not None
    page = await browser.new_page(viewport={"width": 960, "height": 400})
    page.set_default_timeout(WAIT_MS)
    await page.goto(f"http://{address}/")
    return page


def row(page: Page, run_id: str) -> Locator:
    return page.locator(f'tr[data-run-id="{run_id}"]')


async def expect_status(page: Page, run_id: str, status: str) -> None:
    await expect(row(page, run_id).locator("td.status")).to_have_text(status, timeout=WAIT_MS)


async def expect_connection(page: Page, state: str) -> None:
    await expect(page.locator("#connection")).to_have_attribute(
        "data-state", state, timeout=WAIT_MS
    )


async def test_the_page_follows_runs_live_cancels_and_survives_a_restart(
    browser: Browser, tmp_path: Path
) -> None:
    async with server(Settings()) as first:
        page = await open_page(browser, first.http_address)
        await expect_connection(page, "live")
        async with AsyncClient(first.address) as client:
            # Created over gRPC, shown by the page from its WatchRuns stream.
            started = time.perf_counter()
            run = await client.create_run("thread-a", metadata={"user": "ada"})
            await row(page, run.run_id).wait_for(state="attached", timeout=WAIT_MS)
            appeared = time.perf_counter() - started
            print(f"a created run appeared in the page after {appeared * 1000:.0f} ms")
            await expect_status(page, run.run_id, "PENDING")

            # A worker claims and finishes it: the status changes in place.
            await run.claim("worker-1")
            await expect_status(page, run.run_id, "RUNNING")
            await expect(row(page, run.run_id).locator("td.worker")).to_have_text("worker-1")
            await run.set_status(RunStatus.SUCCESS, worker_id="worker-1")
            await expect_status(page, run.run_id, "SUCCESS")
            await expect(row(page, run.run_id).locator("button.cancel")).to_have_count(0)

            # Cancel from the page reaches the run.
            other = await client.create_run("thread-b")
            await row(page, other.run_id).locator("button.cancel").click()

            async def interrupted() -> bool:
                return (await client.fetch_run(other.run_id)).status is RunStatus.INTERRUPTED

            await until(interrupted, "the page's cancel interrupted the run")
            await expect_status(page, other.run_id, "INTERRUPTED")
            await expect(page.locator("#notice")).to_contain_text(f"Cancelled {other.run_id}")

            busy = await client.create_run("thread-c", metadata={"user": "grace"})
            await busy.claim("worker-2")
            await expect_status(page, busy.run_id, "RUNNING")

            # Filters: by thread, then by status.
            await page.select_option("#thread-filter", "thread-a")
            await expect(page.locator("tr[data-run-id]")).to_have_count(1)
            await page.select_option("#thread-filter", "")
            await page.select_option("#status-filter", "ACTIVE")
            await expect(page.locator("tr[data-run-id]")).to_have_count(1)
            await expect(row(page, busy.run_id)).to_have_count(1)
            await page.select_option("#status-filter", "")
            await expect(page.locator("tr[data-run-id]")).to_have_count(3)

        shot = tmp_path / "web-view.png"
        await page.screenshot(path=str(shot), full_page=True)
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copyfile(shot, ARTIFACTS / "web-view.png")

        address = first.http_address
        assert address is not None

    # The server is gone: the page says so, and keeps what it last saw.
    await expect_connection(page, "disconnected")

    # A new server (a new, empty in-memory store) on the same address: the page
    # reconnects by itself and shows that store's runs, not the old ones.
    async with server(Settings(), http_listen=address) as second:
        await expect_connection(page, "live")
        await expect(page.locator("tr[data-run-id]")).to_have_count(0, timeout=WAIT_MS)
        async with AsyncClient(second.address) as client:
            fresh = await client.create_run("thread-new")
            await expect_status(page, fresh.run_id, "PENDING")
        await page.close()


async def test_cancel_needs_an_admin_token_when_auth_is_on(
    browser: Browser, tmp_path: Path
) -> None:
    settings = Settings(tokens_file=write_tokens(tmp_path / "tokens"))
    async with server(settings) as running:
        page = await open_page(browser, running.http_address)
        # No token: even watching is refused, and the page says why.
        await expect_connection(page, "disconnected")
        await expect(page.locator("#connection")).to_contain_text("unauthenticated")

        token = page.locator("#token")
        await token.fill(READER_TOKEN)
        await token.press("Enter")
        await expect_connection(page, "live")

        async with AsyncClient(running.address, token=ADMIN_TOKEN) as client:
            run = await client.create_run("guarded")
            cancel = row(page, run.run_id).locator("button.cancel")
            await cancel.click()
            notice = page.locator("#notice")
            await expect(notice).to_have_attribute("data-kind", "error")
            await expect(notice).to_contain_text("permission_denied")
            await expect(notice).to_contain_text("admin token")
            assert (await client.fetch_run(run.run_id)).status is RunStatus.PENDING

            await token.fill(ADMIN_TOKEN)
            await token.press("Enter")
            await expect_connection(page, "live")
            await cancel.click()

            async def interrupted() -> bool:
                return (await client.fetch_run(run.run_id)).status is RunStatus.INTERRUPTED

            await until(interrupted, "the admin's cancel interrupted the run")
            await expect_status(page, run.run_id, "INTERRUPTED")
        await page.close()
