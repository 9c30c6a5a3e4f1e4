"""A local fake of the LINE platform, for tests, benchmarks and the demo. Never used in production.

It serves the Messaging API endpoints Soudan uses (reply, push, multicast, broadcast, quota and
consumption, rich menus with the image upload of the api-data host, channel access token v2.1)
and checks requests as LINE does: bearer token (401), body shapes of ``messaging-api.yml`` (at most
5 messages, texts of at most 5,000 UTF-16 units, multicast to at most 500 ids; 400 with LINE's
error body), bodies of at most 2 MB (413), single-use reply tokens valid one minute,
``X-Line-Retry-Key`` on push/multicast/broadcast/narrowcast only (400 elsewhere) remembered 24 h
(a repeat is 409 with ``x-line-accepted-request-id``), per-endpoint token-bucket rate limits and a
monthly quota (429), and ``x-line-request-id`` on every answer. The data host and the API host are
one server: point both ``LINE_API_BASE_URL`` and the data URL at it.

In a test (pytest-asyncio), run one in-process on a free port::

    from soudan_fakeline import running_fakeline

    async def test_something() -> None:
        async with running_fakeline("channel-secret", ["access-token"]) as line:
            # line.url -> "http://127.0.0.1:PORT", for LINE_API_BASE_URL
            # line.fake -> the handle: state, switches, inspection
            # line.webhook -> the signed-webhook sender
            result = await line.webhook.text(user_id, "こんにちは", url=webhook_url)
            assert result.status == 200
            ...
            assert line.fake.texts(user_id) == ["..."]            # what the user received
            line.fake.inject("push", status=500)                  # next push fails
            line.fake.inject("push", status=500, after_processing=True)  # sent, answer lost
            line.fake.inject("push", status=0, hold=30)   # sent, answer held (release_held())
            line.fake.inject("multicast", status=429, times=3)
            line.fake.set_latency(2.0, "push")                    # slow answers
            line.fake.quota_limit = 1000; line.fake.consumption = 990
            line.fake.set_rate_limit("multicast", 200)             # 200 requests/s
            line.fake.advance(61)                                  # reply tokens expire

User ids must look like LINE's (``U`` and 32 hex digits; :func:`new_user_id` makes one) unless
the fake is created with ``strict_ids=False``. Build the app yourself with :func:`create_app`
(returns the app and the handle). From the command line: ``soudan-fakeline --port 9000`` serves
one (control API under ``/fake/v1/``, see :mod:`soudan_fakeline.api`), and ``soudan-fakeline
simulate`` plays a scripted student conversation against a running stack.
"""

from soudan_fakeline.platform import Delivery, FakeLine, Fault, RateLimit, new_user_id
from soudan_fakeline.server import FakeLineServer, create_app, free_port, running_fakeline
from soudan_fakeline.webhook import WebhookResult, WebhookSender, signature

__all__ = [
    "Delivery",
    "FakeLine",
    "FakeLineServer",
    "Fault",
    "RateLimit",
    "WebhookResult",
    "WebhookSender",
    "create_app",
    "free_port",
    "new_user_id",
    "running_fakeline",
    "signature",
]
