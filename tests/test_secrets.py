"""No log line may carry a token, a Fernet key, the bot secret or a proxy credential.

The run below uses every one of them where a careless log would pick them up: tokens in
``?token=`` URLs (good, tampered, expired), the bot's bearer secret (right and wrong), proxy URLs
with credentials (one that works, one that refuses), and the Fernet key in the environment. Then
every line of the server's and the stand-in's logs, every ``*.log`` the other suites of this
session left under pytest's temporary root, and the in-process records are scanned.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import orjson
import pytest
from cryptography.fernet import Fernet
from quart.testing.connections import WebsocketDisconnectError

from quartsig.access import accounts
from quartsig.app import create_app
from tests.support.clients import Client
from tests.support.net import ahttp, free_port
from tests.support.scanning import MICROSOCKS, running_microsocks, running_standin
from tests.support.stack import server_stack

FERNET_TOKEN = re.compile(r"gAAAAA[A-Za-z0-9_\-]{20,}")
FERNET_KEY = re.compile(r"(?<![A-Za-z0-9_\-])[A-Za-z0-9_\-]{43}=")

BOT_SECRET = "bot-s3cret-value-0123456789-abcdef"
PROXY_PASSWORD = "proxy-pa55-word"
GHOST_PASSWORD = "ghost-pa55-word"


#: The one token printed on purpose: ``serve --demo``'s ready link for its demo account.
DEMO_LINK = re.compile(r"^demo board \(account \d+\): \S+#token=\S+$", re.MULTILINE)


def leaks(text: str, secrets: list[str]) -> list[str]:
    text = DEMO_LINK.sub("", text)
    found = [s for s in secrets if s and s in text]
    found += FERNET_TOKEN.findall(text)
    found += FERNET_KEY.findall(text)
    return found


@pytest.mark.e2e
@pytest.mark.skipif(MICROSOCKS is None, reason="microsocks is not installed")
async def test_no_secret_reaches_any_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tmp_path_factory: pytest.TempPathFactory
) -> None:
    caplog.set_level("DEBUG")
    async with running_microsocks("127.0.0.2", user="quart", password=PROXY_PASSWORD) as proxy:
        ghost = f"socks5://ghost:{GHOST_PASSWORD}@127.0.0.1:{free_port()}"
        with server_stack(tmp_path / "run", QUARTSIG_INTERVAL="0.5",
                          QUARTSIG_BOT_SECRET=BOT_SECRET,
                          QUARTSIG_PROXIES=f"{proxy.url},{ghost}") as stack:
            key = stack.env["QUARTSIG_SECRET_KEYS"]
            secrets = [stack.token, key, BOT_SECRET, PROXY_PASSWORD, GHOST_PASSWORD]
            # tokens in URLs: good (and used for data through both proxies), bad, expired
            client = await Client(stack.ws_url, stack.token).connect()
            await client.subscribe("EURUSD", "1m")
            await client.wait_for(lambda m: m["type"] == "snapshot")
            await asyncio.sleep(2.0)  # several ticks: the ghost proxy fails and is logged
            await client.close()
            expired = Fernet(key.encode()).encrypt_at_time(b"42", int(time.time()) - 10**6)
            bad = [stack.token[:-3], stack.token[:40] + "x" + stack.token[41:], expired.decode()]
            secrets += bad
            for token in bad:
                closed = Client(stack.ws_url, token)
                with pytest.raises(AssertionError, match="4401"):
                    await closed.connect()
            await ahttp("GET", f"{stack.server.url}/healthz?token={stack.token}")
            # the bot's secret, right and wrong
            for bearer in (BOT_SECRET, BOT_SECRET + "-wrong"):
                status, body = await asyncio.to_thread(_post_token, stack.server.url, bearer)
                assert status == (200 if bearer == BOT_SECRET else 401)
                if status == 200:
                    secrets.append(orjson.loads(body)["token"])
            await asyncio.sleep(0.5)
            logs = [stack.server.log, stack.standin.log]
            texts = {str(p): p.read_text(errors="replace") for p in logs}
        assert "proxy slot socks5://127.0.0.1" in texts[str(logs[0])]  # the ghost was logged
        assert "GET /ws" in texts[str(logs[0])]  # and so were the token-bearing URLs

    # in-process: bad tokens and a proxy with credentials through the app and scanner client
    async with running_standin() as standin:
        app = create_app(data_dir=tmp_path / "inproc", scanner_url=standin.url, interval=0.3,
                         secret_keys=(Fernet.generate_key().decode(),), bot_secret=BOT_SECRET,
                         proxies=(f"socks5://ghost:{GHOST_PASSWORD}@127.0.0.1:{free_port()}",))
        async with app.test_app() as test_app:
            await accounts.add(42)
            inproc_key = app.extensions["quartsig"].settings.secret_keys[0]
            good = app.extensions["quartsig"].tokens.issue(42).token
            secrets += [good, inproc_key]
            client = test_app.test_client()
            for token in (good, good[:-2], "gAAAAA" + "B" * 80):
                async with client.websocket(f"/ws?token={token}") as ws:
                    await ws.send('{"op":"subscribe","symbol":"EURUSD","tf":"1m"}')
                    await asyncio.sleep(0.8)
                    with pytest.raises((WebsocketDisconnectError, TimeoutError)):
                        await _drain(ws)
            await client.post("/api/tokens", json={"tg_id": 42},
                              headers={"Authorization": f"Bearer {BOT_SECRET}x"})
    # (the test's own websockets *client* logs its request line at DEBUG: not the server's)
    records = "\n".join(
        record.getMessage() + (f"\n{record.exc_text}" if record.exc_text else "")
        for record in caplog.records if not record.name.startswith("websockets.client"))
    texts["caplog"] = records
    assert "ProxyConnectionError via socks5://127.0.0.1" in records  # the ghost was logged

    # every log the session's other suites left behind
    for path in tmp_path_factory.getbasetemp().rglob("*.log"):
        if path.is_file() and str(path) not in texts and path.stat().st_size < 50 << 20:
            texts[str(path)] = path.read_text(errors="replace")
    lines = sum(text.count("\n") + 1 for text in texts.values())
    found = {name: leaks(text, secrets) for name, text in texts.items()}
    found = {name: hits for name, hits in found.items() if hits}
    print(f"\nFIGURES secrets: {len(texts)} logs, {lines} lines scanned for {len(secrets)} secrets "
          f"and Fernet token/key patterns: {sum(map(len, found.values()))} hits")
    assert found == {}


async def _drain(ws: object) -> None:
    async with asyncio.timeout(0.5):
        while True:
            await ws.receive()  # type: ignore[attr-defined]


def _post_token(base: str, bearer: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{base}/api/tokens", data=b'{"tg_id": 42}', method="POST",
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
