"""The tutorial, followed from a blank folder (issue 17 §5).

The docs are built once (Sphinx, into a temporary folder); every code block of the built
``tutorial.html`` whose caption names a file is written under that name into an empty
temporary folder (nothing comes from ``examples/``), and each step runs the commands the page
gives, as real processes from that folder, then does in headless Chromium what the step says
and sees what the step says you should see. The JavaScript typed into the console comes from
the page too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from contextlib import AbstractAsyncContextManager
from html.parser import HTMLParser
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from ..browser import Browser, Tab, open_browser
from ..redis_server import RedisServer
from .processes import ROOT, Running, started

EXAMPLES = ROOT / "examples"


@attrs.define
class Block:
    section: str
    language: str
    text: str
    caption: str | None


class _TutorialPage(HTMLParser):
    """The code blocks of a built page: their section (the h2 title), caption and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.section = ""
        self._in_h2 = False
        self._in_caption = False
        self._caption: str | None = None
        self._language = ""
        self._pre: list[str] | None = None
        self._skip = 0  # inside a headerlink anchor

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "h2":
            self._in_h2, self.section = True, ""
        elif tag == "a" and "headerlink" in classes:
            self._skip += 1
        elif tag == "span" and "caption-text" in classes:
            self._in_caption, self._caption = True, ""
        elif tag == "div" and any(name.startswith("highlight-") for name in classes):
            self._language = next(name for name in classes if name.startswith("highlight-"))[10:]
        elif tag == "pre":
            self._pre = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False
        elif tag == "a" and self._skip:
            self._skip -= 1
        elif tag == "span" and self._in_caption:
            self._in_caption = False
        elif tag == "pre" and self._pre is not None:
            self.blocks.append(Block(self.section, self._language, "".join(self._pre), self._caption))
            self._pre, self._caption = None, None

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_h2:
            self.section += data
        elif self._in_caption:
            self._caption = (self._caption or "") + data
        elif self._pre is not None:
            self._pre.append(data)


@attrs.define
class Tutorial:
    blocks: list[Block]

    @property
    def files(self) -> dict[str, str]:
        """Every file the page shows, by its caption (a file shown twice must agree)."""
        found: dict[str, str] = {}
        for block in self.blocks:
            if block.caption:
                assert found.setdefault(block.caption, block.text) == block.text, block.caption
        return found

    def section(self, title: str) -> list[Block]:
        blocks = [block for block in self.blocks if block.section == title]
        assert blocks, f"no section {title!r} in the tutorial: {sorted({b.section for b in self.blocks})}"
        return blocks

    def commands(self, title: str, program: str = "python") -> list[str]:
        """The ``$ ...`` lines of the section's console blocks that run *program*."""
        return [
            line[2:]
            for block in self.section(title)
            if block.language == "console"
            for line in block.text.splitlines()
            if line.startswith(f"$ {program} ")
        ]

    def scripts(self, title: str) -> list[str]:
        """The JavaScript the section has you type into the console."""
        return [block.text for block in self.section(title) if block.language == "javascript"]


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> Tutorial:
    """The docs, built once for the module; the tutorial page's code blocks."""
    out = tmp_path_factory.mktemp("docs")
    subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-b", "html", str(ROOT / "docs"), str(out)],
        check=True,
        capture_output=True,
    )
    page = _TutorialPage()
    page.feed((out / "tutorial.html").read_text())
    return Tutorial(page.blocks)


@pytest.fixture
def folder(tmp_path: Path, tutorial: Tutorial) -> Path:
    """An empty folder with every file the tutorial shows written into it, and nothing else."""
    for name, text in tutorial.files.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return tmp_path


def _environment(**extra: str) -> dict[str, str]:
    """The user's environment (without this repository on the path), serving on a free port."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TRIO_CHANNELS_") and key != "PYTHONPATH"
    }
    return {**env, "PYTHONUNBUFFERED": "1", "TRIO_CHANNELS_BIND": "127.0.0.1:0", **extra}


def _argv(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[0] == "python", command
    return [sys.executable, *words[1:]]


def run(
    folder: Path, command: str, *, marker: str = " at ", **env: str
) -> AbstractAsyncContextManager[Running]:
    """Start a command of the tutorial from *folder*; with the default marker, ``.found`` is the
    URL it serves at."""
    return started(_argv(command), marker, cwd=folder, env=_environment(**env))


_WAIT_FOR_TEXT = """new Promise((resolve) => {
    const element = document.getElementById(ID);
    const done = () => { if (TEST(element.textContent)) resolve(element.textContent); };
    new MutationObserver(done).observe(element, {childList: true, characterData: true, subtree: true});
    done();
})"""

_SOCKET_OPEN = """new Promise((resolve) => {
    if (socket.readyState === WebSocket.OPEN) resolve(true);
    else socket.addEventListener("open", () => resolve(true));
})"""


async def text_of(tab: Tab, element: str, containing: str = "", *, exactly: str | None = None) -> str:
    """The text of the element with id *element*, once it contains *containing* (or is *exactly*)."""
    if exactly is None:
        test = f"((text) => text.includes({json.dumps(containing)}))"
    else:
        test = f"((text) => text === {json.dumps(exactly)})"
    with trio.fail_after(30):
        found: str = await tab.evaluate(
            _WAIT_FOR_TEXT.replace("ID", json.dumps(element)).replace("TEST", test)
        )
    return found


async def say(tab: Tab, text: str) -> None:
    """Type *text* into the page's message box and press Send."""
    with trio.fail_after(15):
        await tab.evaluate(_SOCKET_OPEN)
    await tab.evaluate(
        f"document.getElementById('text').value = {json.dumps(text)};"
        "document.getElementById('form').requestSubmit(); true"
    )


async def alerts(tab: Tab, count: int) -> list[str]:
    return [await tab.next_alert(timeout=15) for _ in range(count)]


def test_every_file_of_the_finished_folder_is_in_the_tutorial(tutorial: Tutorial) -> None:
    """What the tutorial shows is the examples/ folder, file for file (``__init__.py`` aside):
    no step needs a file the page does not show."""
    finished = {
        path.relative_to(EXAMPLES).as_posix()
        for path in EXAMPLES.glob("*/*")
        if path.is_file() and path.name != "__init__.py" and "__pycache__" not in path.parts
    }
    assert sorted(tutorial.files) == sorted(finished)


def test_the_rendered_code_carries_no_lint_pragmas(tutorial: Tutorial) -> None:
    for block in tutorial.blocks:
        assert not re.search(r"#\s*(noqa|fmt:|type:\s*ignore)", block.text), block.caption or block.text


async def test_first_consumers(tutorial: Tutorial, folder: Path) -> None:
    """Both commands (a routing path, then the settings module) answer every page with the hello."""
    commands = tutorial.commands("First consumers")
    assert len(commands) == 2
    async with open_browser() as chromium:
        for command in commands:
            async with run(folder, command) as (_, url):
                tab = await chromium.new_tab(url + "/hello")
                body = await tab.evaluate("document.body.innerText")
                assert body == "Hello world! You asked for /hello"


async def test_echo(tutorial: Tutorial, folder: Path) -> None:
    [command] = tutorial.commands("Echo")
    async with run(folder, command) as (_, url), open_browser() as chromium:
        tab = await chromium.new_tab(url + "/")
        assert await tab.next_alert(timeout=15) == "hello world"


async def _two_tabs_chat(chromium: Browser, url: str) -> None:
    first = await chromium.new_tab(url + "/")
    assert await first.next_alert(timeout=15) == "[user] hello world"
    second = await chromium.new_tab(url + "/")
    assert await second.next_alert(timeout=15) == "[user] hello world"
    assert await first.next_alert(timeout=15) == "[user] hello world"  # the second tab's hello


async def test_groups(tutorial: Tutorial, folder: Path) -> None:
    """Two tabs: each hears its own hello, and the first also hears the second's."""
    [command] = tutorial.commands("Groups: a real chat")
    async with run(folder, command) as (_, url), open_browser() as chromium:
        await _two_tabs_chat(chromium, url)


async def test_running_with_channels(tutorial: Tutorial, folder: Path, redis_server: RedisServer) -> None:
    """The interface server without workers and a worker, over Redis: the same chat, and the
    worker logs each message it consumes."""
    interface, worker = tutorial.commands("Running with channels")
    assert "--noworker" in interface and " worker " in worker
    async with (
        run(folder, interface, REDIS_URL=redis_server.url) as (_, url),
        run(folder, worker, marker="press Ctrl+C", REDIS_URL=redis_server.url) as consumer,
        open_browser() as chromium,
    ):
        await _two_tabs_chat(chromium, url)
        await consumer.output.wait_for("websocket.receive -> chat.consumers.ws_message")


async def test_persisting_data(tutorial: Tutorial, folder: Path) -> None:
    """Two tabs in room abc hear each other; a third in xyz hears nothing."""
    [command] = tutorial.commands("Persisting data")
    async with run(folder, command) as (_, url), open_browser() as chromium:
        one, two, other = [await chromium.new_tab(f"{url}/?room={room}") for room in ("abc", "abc", "xyz")]
        with trio.fail_after(15):
            await other.evaluate(_SOCKET_OPEN)
        await say(one, "hello abc")
        assert await text_of(two, "log", "hello abc") == "hello abc"
        assert await text_of(one, "log", "hello abc") == "hello abc"
        await say(other, "hello xyz")
        assert await text_of(other, "log", "hello xyz") == "hello xyz"
        assert await text_of(one, "log") == "hello abc"


async def _log_in(tab: Tab, url: str, name: str) -> None:
    await tab.goto(url + "/")
    tab.expect_load()
    await tab.evaluate(
        f"document.getElementById('username').value = {json.dumps(name)};document.forms[0].submit(); true"
    )
    await tab.wait_for_load()
    assert await tab.evaluate("document.getElementById('me').textContent") == name
    with trio.fail_after(15):
        await tab.evaluate(_SOCKET_OPEN)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_authentication(tutorial: Tutorial, folder: Path) -> None:
    """Log in through the form: alice and anna hear each other, bob neither; the session key
    opens a WebSocket on the other listener."""
    [command] = tutorial.commands("Authentication")
    [script] = tutorial.scripts("Authentication")
    other = f"127.0.0.1:{_free_port()}"
    assert "127.0.0.1:9000" in command and "127.0.0.1:9000" in script
    async with run(folder, command.replace("127.0.0.1:9000", other)) as (_, url), open_browser() as chromium:
        alice, anna, bob = [await chromium.new_tab() for _ in range(3)]
        for tab, name in ((alice, "alice"), (anna, "anna"), (bob, "bob")):
            await _log_in(tab, url, name)
        await say(alice, "hi")
        assert await text_of(anna, "log", "alice: hi") == "alice: hi"
        await say(bob, "hello?")
        assert await text_of(bob, "log", "bob: hello?") == "bob: hello?"
        assert await text_of(anna, "log") == "alice: hi"
        await bob.evaluate(script.replace("127.0.0.1:9000", other) + "; true")
        assert await bob.next_alert(timeout=15) == "bob: from the other server"


async def test_security(tutorial: Tutorial, folder: Path) -> None:
    """The custom validator accepts a page of localhost and refuses one of 127.0.0.1."""
    [command] = tutorial.commands("Security")
    [script] = tutorial.scripts("Security")
    async with run(folder, command) as (_, url), open_browser() as chromium:
        port = url.rsplit(":", 1)[1]
        local = await chromium.new_tab(f"http://localhost:{port}/")
        await local.evaluate(script + "; true")
        assert await local.next_alert(timeout=15) == "accepted"
        numeric = await chromium.new_tab(f"http://127.0.0.1:{port}/")
        await numeric.evaluate(script + "; true")
        assert await numeric.next_alert(timeout=15) == "rejected"


async def test_routing(tutorial: Tutorial, folder: Path) -> None:
    """GET /poll/ is a 404, a POST is polled; a WebSocket under /chat gets its room."""
    [command] = tutorial.commands("Routing")
    post, websocket = tutorial.scripts("Routing")
    async with run(folder, command) as (_, url), open_browser() as chromium:
        tab = await chromium.new_tab(url + "/poll/")
        assert (await tab.evaluate("document.body.innerText")).strip() == "404 Not Found: /poll/"
        await tab.evaluate(post + "; true")
        assert (await tab.next_alert(timeout=15)).strip() == "polled POST"
        await tab.evaluate(websocket + "; true")
        assert await tab.next_alert(timeout=15) == "lobby: hello"


async def test_models(tutorial: Tutorial, folder: Path) -> None:
    """Said in a tab, announced by curl's POST: both tabs show both; both were saved."""
    server, listing = tutorial.commands("Models")
    [curl] = tutorial.commands("Models", program="curl")
    async with run(folder, server) as (_, url), open_browser() as chromium:
        one, two = [await chromium.new_tab(url + "/?room=lobby") for _ in range(2)]
        with trio.fail_after(15):
            await two.evaluate(_SOCKET_OPEN)
        await say(one, "hello lobby")
        assert await text_of(two, "log", "hello lobby") == "hello lobby"
        # The curl command, sent by httpx: its --data to its URL, on this server's port
        words = shlex.split(curl)
        data, address = words[words.index("--data") + 1], words[-1]
        async with httpx.AsyncClient() as client:
            answer = await client.post(address.replace("http://127.0.0.1:8000", url), content=data)
        assert (answer.status_code, answer.text) == (202, "announced\n")
        for tab in (one, two):
            assert await text_of(tab, "log", data) == f"hello lobby[announcement] {data}"
    saved = await trio.run_process(_argv(listing), cwd=folder, env=_environment(), capture_stdout=True)
    assert saved.stdout.decode().splitlines() == ["hello lobby", f"[announcement] {data}"]


async def test_enforcing_ordering(tutorial: Tutorial, folder: Path) -> None:
    [command] = tutorial.commands("Enforcing ordering")
    async with run(folder, command) as (_, url), open_browser() as chromium:
        tab = await chromium.new_tab(url + "/")
        assert await alerts(tab, 3) == ["1: one", "2: two", "3: three"]


async def _who_is_here(chromium: Browser, url: str) -> None:
    """ann and bob see each other; what bob says reaches ann with its time; bob leaving shows;
    a newcomer gets what was said before."""
    ann = await chromium.new_tab(url + "/?name=ann")
    await text_of(ann, "here", "ann")
    bob = await chromium.new_tab(url + "/?name=bob")
    assert await text_of(bob, "here", "ann, bob") == "ann, bob"
    assert await text_of(ann, "here", "ann, bob") == "ann, bob"
    await text_of(ann, "log", "bob joined")
    await bob.evaluate(
        "document.getElementById('text').value = 'hi ann';"
        "document.getElementById('form').requestSubmit(); true"
    )
    log = await text_of(ann, "log", "bob: hi ann")
    assert re.search(r"\d:\d\d:\d\d.* bob: hi ann", log), log
    await bob.close()
    await text_of(ann, "log", "bob left")
    assert await text_of(ann, "here") == "ann"
    carol = await chromium.new_tab(url + "/?name=carol")
    await text_of(carol, "log", "bob: hi ann")


async def test_who_is_here(tutorial: Tutorial, folder: Path) -> None:
    [command] = tutorial.commands("Who is here, and catching up")
    async with run(folder, command) as (_, url), open_browser() as chromium:
        await _who_is_here(chromium, url)


async def test_the_browser_client(tutorial: Tutorial, folder: Path) -> None:
    """The same room on trio-channels.js; and after a restart of the server the page heals."""
    [command] = tutorial.commands("The browser client")
    async with open_browser() as chromium:
        async with run(folder, command) as (_, url):
            await _who_is_here(chromium, url)
            port = url.rsplit(":", 1)[1]
            dora = await chromium.new_tab(url + "/?name=dora")
            await text_of(dora, "here", "dora")
        assert (await text_of(dora, "status", "reconnecting")).startswith("reconnecting")
        async with run(folder, command, TRIO_CHANNELS_BIND=f"127.0.0.1:{port}"):
            assert await text_of(dora, "status", exactly="") == ""
            assert "dora" in await text_of(dora, "here", "dora")
