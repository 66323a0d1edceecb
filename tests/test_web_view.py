"""The live web view in a real browser: Debian's Chromium, headless, driven by Playwright.

The page is served by the server's HTTP listener and talks Connect to it; the runs are
made and moved by the Python client over gRPC, so what the browser shows went through
the server's WatchRuns stream. Each step waits for what the page shows (Playwright's
`expect`, with a generous timeout that only guards against a hang) or for the page's
requests; nothing sleeps. The page counts the streams it opened for a fresh snapshot in
`#connection[data-snapshots]`, so a test can tell a resume from a re-snapshot.

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

import grpc
import pytest
from _security import ADMIN_TOKEN, READER_TOKEN, write_tokens
from _streams import open_watch, until
from playwright.async_api import Browser, Locator, Page, Request, Route, async_playwright, expect

from runcontrol import AsyncClient, RunStatus
from runcontrol.v1 import run_control_pb2_grpc
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
WATCH_RUNS = "**/runcontrol.v1.RunControl/WatchRuns"
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


async def expect_snapshots(page: Page, count: int) -> None:
    """How many streams the page opened for a fresh snapshot (the rest resumed)."""
    await expect(page.locator("#connection")).to_have_attribute(
        "data-snapshots", str(count), timeout=WAIT_MS
    )


def is_watch(request: Request) -> bool:
    return request.url.endswith("/runcontrol.v1.RunControl/WatchRuns")


def resumes(request: Request) -> bool:
    """A WatchRuns request that resumes (a start revision), not a snapshot."""
    body = request.post_data_buffer or b""
    return b"startRevision" in body and b"sendInitial" not in body


async def test_the_page_follows_runs_live_cancels_and_survives_a_restart(
    browser: Browser, tmp_path: Path
) -> None:
    async with server(Settings()) as first:
        page = await open_page(browser, first.http_address)
        await expect_connection(page, "live")
        await expect_snapshots(page, 1)
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

            # A redraw leaves unchanged rows in place: a focused Cancel button keeps the
            # focus while a thread before its own appears and another one goes.
            button = row(page, busy.run_id).locator("button.cancel")
            await button.focus()
            await expect(button).to_be_focused()
            early = await client.create_run("thread-0")
            await expect_status(page, early.run_id, "PENDING")
            await client.delete_run(run.run_id)
            await expect(page.locator('tbody[data-thread-id="thread-a"]')).to_have_count(0)
            await expect(button).to_be_focused()

        address = first.http_address
        assert address is not None

    # The server is gone: the page says so, and keeps what it last saw.
    await expect_connection(page, "disconnected")

    # A new server (a new, empty in-memory store) on the same address: the page
    # reconnects by itself, sees another store id and starts over from a snapshot of
    # that store's runs, not the old ones.
    async with server(Settings(), http_listen=address) as second:
        await expect_connection(page, "live")
        await expect_snapshots(page, 2)
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

            # The new token reconnects the stream at once, and it carries the token.
            async with page.expect_request(
                lambda request: (
                    is_watch(request)
                    and request.headers.get("authorization") == f"Bearer {ADMIN_TOKEN}"
                )
            ):
                await token.fill(ADMIN_TOKEN)
                await token.press("Enter")
            await expect_connection(page, "live")
            await cancel.click()

            async def interrupted() -> bool:
                return (await client.fetch_run(run.run_id)).status is RunStatus.INTERRUPTED

            await until(interrupted, "the admin's cancel interrupted the run")
            await expect_status(page, run.run_id, "INTERRUPTED")
        await page.close()


async def test_the_page_resumes_from_a_durable_store_across_servers(
    browser: Browser, pg_url: str
) -> None:
    """A rolling restart over one PostgreSQL store: the old server drains, a new one
    takes its address after runs changed. The page resumes from its revision (no new
    snapshot) and shows exactly the store's runs; refusals that carry no store id (the
    drain gate) or that the handler answers after its headers (a watcher limit) neither
    make it start over nor count as live."""
    settings = Settings(store=pg_url)
    watches: list[Request] = []
    async with server(settings) as first:
        address = first.http_address
        page = await open_page(browser, address)
        page.on("request", lambda request: watches.append(request) if is_watch(request) else None)
        await expect_connection(page, "live")
        await expect_snapshots(page, 1)
        async with AsyncClient(first.address) as client:
            kept = await client.create_run("thread-a")
            claimed = await client.create_run("thread-b")
            deleted = await client.create_run("thread-d")
            await client.cancel_run(deleted.run_id)
            await expect_status(page, deleted.run_id, "INTERRUPTED")
            await expect(page.locator("tr[data-run-id]")).to_have_count(3)

        # Drain: the stream ends with SHUTTING_DOWN and every reconnect is refused by the
        # drain gate, before the handler sends the store id. That is no new store: the
        # page keeps resuming (two refused reconnects: the first one's outcome was seen).
        before_drain = len(watches)
        await first.begin_drain()
        await until(lambda: len(watches) >= before_drain + 2, "two reconnects to a draining server")
        await expect(page.locator("#connection")).to_contain_text("SHUTTING_DOWN")
        await expect_connection(page, "disconnected")
        await expect_snapshots(page, 1)
        assert all(resumes(request) for request in watches[before_drain:])

        # Held off the next server until its store moved past the page's revision.
        async def refuse(route: Route) -> None:
            await route.abort()

        await page.route(WATCH_RUNS, refuse)

    # The next server: same store, the old address, one watcher slot (taken below).
    async with server(dataclasses.replace(settings, max_watchers=1), http_listen=address) as second:
        async with AsyncClient(second.address) as client:
            await client.set_status(claimed.run_id, RunStatus.RUNNING, worker_id="worker-9")
            await client.delete_run(deleted.run_id)
            created = await client.create_run("thread-c")
            expected = {run.run_id: run.status.name async for run in client.list_runs()}
        assert expected == {
            kept.run_id: "PENDING",
            claimed.run_id: "RUNNING",
            created.run_id: "PENDING",
        }

        async with grpc.aio.insecure_channel(second.address) as channel:
            # The only watcher slot is taken: the page's resume gets its headers (with the
            # store id) and then LIMIT_EXCEEDED. Not live, not a new snapshot.
            holder = await open_watch(run_control_pb2_grpc.RunControlStub(channel))
            await page.evaluate(
                """() => {
                  const connection = document.getElementById("connection");
                  window.states = [];
                  new MutationObserver(() => window.states.push(connection.dataset.state))
                    .observe(connection, { attributes: true, attributeFilter: ["data-state"] });
                }"""
            )
            await page.unroute(WATCH_RUNS, refuse)
            await expect(page.locator("#connection")).to_contain_text("LIMIT_EXCEEDED")
            assert "live" not in await page.evaluate("() => window.states")
            await expect_snapshots(page, 1)
            holder.cancel()

        # The slot is free: the page resumes from its revision and shows exactly the
        # store's runs, the deleted one gone, without starting over.
        await expect_connection(page, "live")
        for run_id, status in expected.items():
            await expect_status(page, run_id, status)
        await expect(page.locator("tr[data-run-id]")).to_have_count(len(expected))
        await expect_snapshots(page, 1)
        # Every stream since the first one resumed.
        assert watches and all(resumes(request) for request in watches)
        await page.close()
