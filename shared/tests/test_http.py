"""The client's address behind a reverse proxy: trusted only from the proxies named."""

from __future__ import annotations

import ipaddress

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from soudan_shared.http import IPNetwork, create_base_app, forwarded_client

pytestmark = pytest.mark.unit

PROXY = "10.0.0.5"
TRUSTED = [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/8")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # The proxy appends the address it received the request from.
        (PROXY, ["203.0.113.9"], "203.0.113.9"),
        # A client may send its own X-Forwarded-For: only the right-most untrusted hop counts.
        (PROXY, ["198.51.100.1, 203.0.113.9"], "203.0.113.9"),
        # Two proxies of ours in a row (and a header split over two lines).
        (PROXY, ["198.51.100.1, 203.0.113.9", "10.0.0.7"], "203.0.113.9"),
        (PROXY, ["2001:db8::1, fd00::2"], "2001:db8::1"),
        # Not from a proxy of ours: the header is anyone's to write, so it is ignored.
        ("203.0.113.50", ["198.51.100.1"], "203.0.113.50"),
        # A proxy that sent nothing, or nonsense: keep the proxy's address, never a made-up one.
        (PROXY, [], PROXY),
        (PROXY, ["unknown"], PROXY),
        (PROXY, ["198.51.100.1, <script>"], PROXY),
        # Every hop trusted: the left-most is the farthest we know.
        (PROXY, ["10.0.0.8, 10.0.0.7"], "10.0.0.8"),
        (None, ["198.51.100.1"], None),
    ],
)
def test_the_client_address_is_read_through_trusted_proxies_only(
    peer: str | None, forwarded: list[str], expected: str | None
) -> None:
    assert forwarded_client(peer, forwarded, TRUSTED) == expected


async def _remote_seen(trusted: list[IPNetwork], headers: dict[str, str]) -> str:
    app = create_base_app("test", trusted_proxies=trusted)

    async def whoami(request: web.Request) -> web.Response:
        return web.Response(text=request.remote or "")

    app.router.add_get("/whoami", whoami)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/whoami", headers=headers)
        return await response.text()


async def test_a_service_behind_its_proxy_sees_the_students_address() -> None:
    local = [ipaddress.ip_network("127.0.0.1/32")]
    forwarded = {"X-Forwarded-For": "203.0.113.9"}

    assert await _remote_seen(local, forwarded) == "203.0.113.9"
    # No proxy configured (the default), or another one: the header changes nothing.
    assert await _remote_seen([], forwarded) == "127.0.0.1"
    assert await _remote_seen([ipaddress.ip_network("10.0.0.0/8")], forwarded) == "127.0.0.1"
