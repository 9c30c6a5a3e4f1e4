"""Building and running the fake: the app factory and an in-process server for tests."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from soudan_fakeline.api import FAKE, MAX_BODY, SENDER, add_routes
from soudan_fakeline.platform import FakeLine
from soudan_fakeline.webhook import WebhookSender


def create_app(
    channel_secret: str,
    access_tokens: Iterable[str],
    *,
    webhook_url: str | None = None,
    **options: Any,
) -> tuple[web.Application, FakeLine]:
    """The fake's aiohttp app and its handle (:class:`FakeLine`; ``options`` go to it)."""
    fake = FakeLine(channel_secret=channel_secret, access_tokens=set(access_tokens), **options)
    # A little over LINE's 2 MB so that the fake, not aiohttp, answers an oversized body.
    app = web.Application(client_max_size=MAX_BODY + 64 * 1024)
    app[FAKE] = fake
    sender = WebhookSender(fake, webhook_url)
    app[SENDER] = sender

    async def close_sender(app: web.Application) -> None:
        await sender.close()

    app.on_cleanup.append(close_sender)
    add_routes(app)
    return app, fake


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class FakeLineServer:
    """A running fake: ``url`` is its base URL (for ``LINE_API_BASE_URL``)."""

    url: str
    port: int
    fake: FakeLine
    webhook: WebhookSender


#: The channel secret and access token a fake started without its own accepts (tests, demos).
TEST_CHANNEL_SECRET = "test-channel-secret"  # noqa: S105 - a test double's
TEST_ACCESS_TOKEN = "test-access-token"  # noqa: S105 - a test double's


@contextlib.asynccontextmanager
async def running_fakeline(
    channel_secret: str = TEST_CHANNEL_SECRET,
    access_tokens: Iterable[str] = (TEST_ACCESS_TOKEN,),
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    webhook_url: str | None = None,
    **options: Any,
) -> AsyncIterator[FakeLineServer]:
    """Serve a fake on ``host``:``port`` (a free port by default) in the running loop."""
    app, fake = create_app(channel_secret, access_tokens, webhook_url=webhook_url, **options)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    chosen = port or free_port()
    site = web.TCPSite(runner, host, chosen)
    await site.start()
    try:
        yield FakeLineServer(f"http://{host}:{chosen}", chosen, fake, app[SENDER])
    finally:
        await runner.cleanup()
