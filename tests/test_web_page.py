"""The browser page at `GET /`, driven in Debian's chromium through Playwright.

The page runs under the relay's Content-Security-Policy in every test but one: the escaping
test turns the policy off, so that the page's own escaping is all that keeps job data out of
the DOM as markup.
"""

from __future__ import annotations

import json
import re
import struct
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Error,
    Page,
    WebSocketRoute,
    expect,
    sync_playwright,
)

from tests.relay_process import TEST_SCRIPTS, RelayProcess
from tests.security.relay_setup import auth_config, new_key, start_relay

CHROMIUM = Path("/usr/bin/chromium")
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
JOB_TIMEOUT_MS = 20_000
KEY_STORAGE_NAME = "hpc-relay.api-key"

# Markup that runs script if a page puts it into the DOM as HTML. No double quotes, so the
# complete pane, which shows JSON, contains it unchanged.
INJECTED_MARKUP = (
    "<script>window.__injected = 1</script><img src=x onerror=window.__injected=2><b>bold</b>"
)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    server = RelayProcess(tmp_path_factory.mktemp("web"), "--scripts", str(TEST_SCRIPTS))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found; install it with apt-get install -y chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class PageProblems:
    """Uncaught script errors and console errors of one page. A passing test leaves none."""

    errors: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        # Without the CSP, which blocks it, the browser requests /favicon.ico and gets 404.
        if message.type == "error" and not message.location["url"].endswith("/favicon.ico"):
            self.errors.append(f"console: {message.text} at {message.location['url']}")

    def on_page_error(self, error: Error) -> None:
        self.errors.append(f"uncaught: {error}")


@contextmanager
def open_page(browser: Browser, relay: RelayProcess, *, bypass_csp: bool = False) -> Iterator[Page]:
    """Open the page in a fresh browser context and yield it once the templates are loaded."""
    context = browser.new_context(bypass_csp=bypass_csp)
    problems = PageProblems()
    try:
        page = context.new_page()
        page.on("console", problems.on_console)
        page.on("pageerror", problems.on_page_error)
        page.goto(f"{relay.http_url}/")
        expect(page.locator("#templates-status")).to_contain_text("templates loaded")
        yield page
    finally:
        context.close()
    assert problems.errors == []


@pytest.fixture
def page(browser: Browser, relay: RelayProcess) -> Iterator[Page]:
    with open_page(browser, relay) as opened:
        yield opened


def field_for(page: Page, argument: str) -> Any:
    return page.locator(f'.field[data-argument="{argument}"]')


def control_for(page: Page, argument: str) -> Any:
    return field_for(page, argument).locator("input, select, textarea")


def submit(page: Page, template: str, **arguments: str) -> None:
    page.select_option("#template-select", template)
    for name, value in arguments.items():
        control_for(page, name).fill(value)
    page.click("#submit-button")


def wait_for_state(page: Page, state: str) -> str:
    """Wait until the job state reads `state`, and return the job id."""
    expect(page.locator("#job-state")).to_have_text(state, timeout=JOB_TIMEOUT_MS)
    return page.locator("#job-id").inner_text()


def relay_events(relay: RelayProcess, job_id: str) -> list[dict[str, Any]]:
    status, body = relay.get_json(f"/jobs/{job_id}/events")
    assert status == 200, body
    events: list[dict[str, Any]] = body["events"]
    return events


def test_page_served_with_security_headers(relay: RelayProcess) -> None:
    with urllib.request.urlopen(f"{relay.http_url}/", timeout=10) as response:
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert b'src="/static/app.js"' in response.read()
    with urllib.request.urlopen(f"{relay.http_url}/static/app.js", timeout=10) as response:
        assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    for path in ["/static/__init__.py", "/static/index.html", "/static/..%2F__init__.py"]:
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"{relay.http_url}{path}", timeout=10)
        error.value.close()
        assert error.value.code == 404, path


def test_hello_form_shows_defaults(page: Page) -> None:
    page.select_option("#template-select", "hello")

    expect(page.locator("#template-description")).to_contain_text("Greets a name")
    expect(field_for(page, "name").locator("label")).to_have_text("Name")
    expect(field_for(page, "name")).to_contain_text("Who to greet.")
    expect(field_for(page, "name")).to_contain_text("At most 200 characters.")
    expect(control_for(page, "name")).to_have_value("world")
    expect(field_for(page, "steps").locator("label")).to_have_text("Steps")
    expect(control_for(page, "steps")).to_have_value("3")
    expect(control_for(page, "steps")).to_have_attribute("min", "1")
    expect(control_for(page, "steps")).to_have_attribute("max", "20")
    expect(field_for(page, "steps")).to_contain_text("An integer from 1 to 20.")
    expect(field_for(page, "delay_ms").locator("label")).to_have_text("Delay (ms)")
    expect(control_for(page, "delay_ms")).to_have_value("200")
    # hello's schema sets additionalProperties false, so there is no free-form JSON field.
    expect(page.locator("#arg-extra")).to_have_count(0)


def test_browser_validation_blocks_submit(page: Page) -> None:
    sockets: list[str] = []
    page.on("websocket", lambda socket: sockets.append(socket.url))

    submit(page, "hello", steps="0")
    expect(field_for(page, "steps").locator(".field-error")).not_to_be_empty()
    assert control_for(page, "steps").evaluate("control => control.validity.rangeUnderflow")

    # hold's release_file has the JSON Schema pattern "^/": matched anywhere, not anchored.
    page.select_option("#template-select", "hold")
    release = control_for(page, "release_file")
    release.fill("relative/path")
    page.click("#submit-button")
    expect(field_for(page, "release_file").locator(".field-error")).to_contain_text("^/")
    release.fill("/absolute/path")
    expect(field_for(page, "release_file").locator(".field-error")).to_be_empty()
    control_for(page, "seconds").fill("")
    control_for(page, "token_file").fill("not absolute")
    page.click("#submit-button")
    expect(field_for(page, "token_file").locator(".field-error")).to_contain_text("^/")

    expect(page.locator("#job-id")).to_be_empty()
    assert sockets == []


def test_relay_rejection_reason_shown(page: Page) -> None:
    page.select_option("#template-select", "hello")
    # Without the max attribute the browser accepts 99, and the relay's schema check rejects it.
    control_for(page, "steps").evaluate("control => control.removeAttribute('max')")
    control_for(page, "steps").fill("99")
    page.click("#submit-button")

    wait_for_state(page, "rejected")
    expect(page.locator("#form-error")).to_contain_text("The relay rejected the request:")
    expect(page.locator("#form-error")).to_contain_text("99")
    expect(page.locator("#connection-state")).to_contain_text("4400")
    expect(page.locator("#job-id")).to_be_empty()
    expect(page.locator("#submit-button")).to_be_enabled()


def test_token_stream_text_matches_tokens(page: Page, relay: RelayProcess) -> None:
    submit(page, "token_stream", n="20", delay_ms="10", prompt="It is")

    job_id = wait_for_state(page, "completed")
    events = relay_events(relay, job_id)
    tokens = [event["data"] for event in events if event["type"] == "token"]
    assert len(tokens) == 20
    assert page.locator("#token-text").text_content() == "".join(tokens)
    expect(page.locator("#complete-data")).to_contain_text('"tokens": 20')
    expect(page.locator("#connection-state")).to_have_text("closed (1000: complete)")
    expect(page.locator("#scheduler-id")).not_to_be_empty()
    expect(page.locator("#cancel-button")).to_be_disabled()


def test_hello_progress_and_log(page: Page, relay: RelayProcess) -> None:
    submit(page, "hello", name="Ada", steps="2", delay_ms="0")

    job_id = wait_for_state(page, "completed")
    logs = [event["data"] for event in relay_events(relay, job_id) if event["type"] == "log"]
    expect(page.locator("#log-lines li")).to_have_text(logs)
    expect(page.locator("#progress-percent")).to_have_text("100%")
    expect(page.locator("#progress-message")).to_have_text("step 2 of 2")
    assert page.locator("#progress").evaluate("bar => bar.value") == 100
    expect(page.locator("#complete-data")).to_contain_text('"greeting": "Hello, Ada!"')


def test_fail_job_shows_fatal(page: Page, relay: RelayProcess) -> None:
    submit(page, "fail", status="7")

    job_id = wait_for_state(page, "failed")
    fatal = relay_events(relay, job_id)[-1]
    assert fatal["type"] == "fatal"
    expect(page.locator("#fatal")).to_be_visible()
    expect(page.locator("#fatal-message")).to_have_text(fatal["data"]["message"])
    expect(page.locator("#fatal-exit-status")).to_have_text("7")
    expect(page.locator("#connection-state")).to_contain_text("closed (4000:")
    expect(page.locator("#log-lines")).to_contain_text("exiting with status 7")


def test_job_text_never_runs_as_markup(browser: Browser, relay: RelayProcess) -> None:
    dialogs: list[str] = []
    with open_page(browser, relay, bypass_csp=True) as page:
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))

        submit(page, "hello", name=INJECTED_MARKUP, steps="1", delay_ms="0")
        wait_for_state(page, "completed")
        expect(page.locator("#log-lines li")).to_contain_text([f"Hello, {INJECTED_MARKUP}!"])
        expect(page.locator("#complete-data")).to_contain_text(f"Hello, {INJECTED_MARKUP}!")

        page.select_option("#template-select", "echo")
        page.fill("#arg-extra", json.dumps({"name": INJECTED_MARKUP}))
        page.click("#submit-button")
        wait_for_state(page, "completed")
        expect(page.locator("#complete-data")).to_contain_text(INJECTED_MARKUP)

        assert page.locator("main script, main img, main b").count() == 0
        assert page.evaluate("() => window.__injected") is None
    assert dialogs == []


def test_cancel_sleepy_job(page: Page, relay: RelayProcess) -> None:
    submit(page, "sleepy", seconds="30")
    expect(page.locator("#log-lines")).to_contain_text("tick 1", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#cancel-button")).to_be_enabled()

    page.click("#cancel-button")

    job_id = wait_for_state(page, "cancelled by client")
    expect(page.locator("#connection-state")).to_have_text("closed (4001: cancelled)")
    expect(page.locator("#cancel-button")).to_be_disabled()
    last = relay_events(relay, job_id)[-1]
    assert last["type"] == "cancelled"
    assert last["data"] == {"by": "client"}


@dataclass
class InterruptingProxy:
    """Forwards the page's job sockets to the relay, and cuts them as the relay would.

    The first socket is closed with 4408 (too slow) after 5 tokens, the second with 1001
    (shutdown) after 5 more. The third repeats the last frame the page already has before
    the relay's first frame, as an overlapping replay would, then forwards everything.
    """

    closes: tuple[tuple[int, str], ...] = ((4408, "too slow"), (1001, "relay shutting down"))
    tokens_per_socket: int = 5
    urls: list[str] = field(default_factory=list)
    last_seqs: list[int] = field(default_factory=list)
    """Seq of the last event each cut socket delivered to the page."""
    last_frame: str | bytes | None = None

    def handle(self, route: WebSocketRoute) -> None:
        index = len(self.urls)
        self.urls.append(route.url)
        server = route.connect_to_server()
        if index < len(self.closes):
            server.on_message(self._cut_after_tokens(route, server, *self.closes[index]))
        else:
            server.on_message(self._repeat_last_frame(route))

    def _cut_after_tokens(
        self, route: WebSocketRoute, server: WebSocketRoute, code: int, reason: str
    ) -> Callable[[str | bytes], None]:
        tokens = 0
        last_seq = -1
        cut = False

        def forward(message: str | bytes) -> None:
            nonlocal tokens, last_seq, cut
            if cut:
                return
            route.send(message)
            if isinstance(message, str):
                event = json.loads(message)
                last_seq = event.get("seq", last_seq)
                tokens += event.get("type") == "token"
            if tokens == self.tokens_per_socket:
                cut = True
                self.last_seqs.append(last_seq)
                self.last_frame = message
                route.close(code=code, reason=reason)
                server.close()

        return forward

    def _repeat_last_frame(self, route: WebSocketRoute) -> Callable[[str | bytes], None]:
        repeated = False

        def forward(message: str | bytes) -> None:
            nonlocal repeated
            if not repeated and self.last_frame is not None:
                route.send(self.last_frame)
            repeated = True
            route.send(message)

        return forward


def test_resume_after_close_shows_each_event_once(page: Page, relay: RelayProcess) -> None:
    proxy = InterruptingProxy()
    page.route_web_socket(re.compile(r"/ws/jobs"), proxy.handle)

    submit(page, "token_stream", n="30", delay_ms="40")

    job_id = wait_for_state(page, "completed")
    assert len(proxy.urls) == 3, proxy.urls
    assert urllib.parse.urlsplit(proxy.urls[0]).path == "/ws/jobs"
    for url, last_seq in zip(proxy.urls[1:], proxy.last_seqs, strict=True):
        parts = urllib.parse.urlsplit(url)
        assert parts.path == f"/ws/jobs/{job_id}"
        assert urllib.parse.parse_qs(parts.query) == {"after": [str(last_seq)]}
    events = relay_events(relay, job_id)
    tokens = [event["data"] for event in events if event["type"] == "token"]
    assert len(tokens) == 30
    assert page.locator("#token-text").text_content() == "".join(tokens)
    expect(page.locator("#connection-state")).to_have_text("closed (1000: complete)")


def post_chunk(
    relay: RelayProcess, job_id: str, token: str, event_id: int, mime: str, payload: bytes
) -> None:
    query = urllib.parse.urlencode({"type": "chunk", "id": event_id, "mime": mime})
    request = urllib.request.Request(
        f"{relay.http_url}/jobs/{job_id}/events?{query}",
        data=payload,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202


def wav_bytes(samples: int = 800, rate: int = 8000) -> bytes:
    """A mono 8-bit PCM WAV file of silence."""
    data = b"\x80" * samples
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt "
    header += struct.pack("<IHHIIHH", 16, 1, 1, rate, rate, 1, 8)
    return header + b"data" + struct.pack("<I", len(data)) + data


def wait_for_file(path: Path, seconds: float = 20) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not written within {seconds}s")
        time.sleep(0.05)
    return path.read_text()


def test_chunks_listed_with_download_links(page: Page, relay: RelayProcess, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    release_file = tmp_path / "release"
    submit(page, "hold", token_file=str(token_file), release_file=str(release_file), seconds="30")
    token = wait_for_file(token_file)
    job_id = page.locator("#job-id").inner_text()
    audio = wav_bytes()
    html = b"<script>window.__injected = 3</script>"
    post_chunk(relay, job_id, token, 1000, "audio/wav", audio)
    post_chunk(relay, job_id, token, 1001, "text/html", html)
    release_file.touch()

    wait_for_state(page, "completed")
    chunks = page.locator("#chunks li")
    expect(chunks).to_have_count(2)
    expect(chunks.nth(0)).to_contain_text(f"audio/wav, {len(audio)} bytes")
    expect(chunks.nth(0).locator("audio")).to_have_count(1)
    expect(chunks.nth(1)).to_contain_text(f"text/html, {len(html)} bytes")
    expect(chunks.nth(1).locator("audio")).to_have_count(0)
    for index, expected, extension in [(0, audio, ".wav"), (1, html, ".bin")]:
        link = chunks.nth(index).locator("a")
        assert (link.get_attribute("href") or "").startswith("blob:")
        with page.expect_download() as download_info:
            link.click()
        download = download_info.value
        assert download.suggested_filename.endswith(extension)
        assert Path(download.path()).read_bytes() == expected
    assert page.evaluate("() => window.__injected") is None


def test_api_key_kept_in_session_storage(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    key = new_key("web")
    server = start_relay(tmp_path_factory.mktemp("web-keys"), auth_config([key]))
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{server.http_url}/")
        expect(page.locator("#templates-status")).to_contain_text("requires an API key")
        expect(page.locator("#template-select option")).to_have_count(0)

        page.fill("#api-key", key.secret)
        page.click("#load-templates")
        expect(page.locator("#templates-status")).to_contain_text("templates loaded")
        submit(page, "hello", steps="1", delay_ms="0")
        wait_for_state(page, "completed")

        assert page.evaluate(f"() => sessionStorage.getItem('{KEY_STORAGE_NAME}')") == key.secret
        assert page.evaluate("() => localStorage.length") == 0
        page.reload()
        expect(page.locator("#api-key")).to_have_value(key.secret)
        expect(page.locator("#templates-status")).to_contain_text("templates loaded")
    finally:
        context.close()
        server.stop()
