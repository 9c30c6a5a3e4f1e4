"""Composition root of the ingress service, and its one route: ``POST /webhook``.

The answer to a webhook request, in the order the checks run:

- ``415``: a ``Content-Encoding`` other than identity (LINE sends none; the signature covers the
  bytes as sent, and a compressed body could expand past the bound);
- ``413``: a ``Content-Length`` over 1 MiB, before a byte of the body is read; a chunked body
  is cut as soon as it passes 1 MiB. The connection is not kept;
- ``400``: no ``X-Line-Signature`` (checked before the body is read); ``401``: a signature that
  does not match the raw body (HMAC-SHA256 with the channel secret, constant-time comparison).
  Both publish ``security.signature_rejected`` in the background;
- ``408``: the body did not arrive within 10 s;
- ``400`` with a short reason: not UTF-8 JSON, or not ``{destination, events: [objects]}``
  (:mod:`soudan_ingress.events`);
- ``200``: every event published as a ``LineEventReceived`` and confirmed by the broker
  (:mod:`soudan_ingress.publishing`), or no events at all (LINE's connectivity check);
- ``503``: the broker is down, refused an event, or did not confirm all of them within
  ``INGRESS_CONFIRM_TIMEOUT``; LINE redelivers the request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import structlog
from aiohttp import ClientPayloadError, hdrs, web
from soudan_shared.bus import Bus, PublishFailed
from soudan_shared.contracts import utcnow
from soudan_shared.http import REGISTRY, create_base_app
from soudan_shared.runtime import BUS, FACTS, use_bus

from soudan_ingress.background import BackgroundFacts, IngressMetrics
from soudan_ingress.events import InvalidWebhook, missing_fields, parse_webhook
from soudan_ingress.publishing import publish_in_user_order
from soudan_ingress.settings import IngressSettings
from soudan_ingress.signature import signature_matches
from soudan_ingress.stats import WebhookStats

SERVICE = "ingress"
MAX_BODY_BYTES = 1024**2
BODY_READ_TIMEOUT = 10.0
SIGNATURE_HEADER = "X-Line-Signature"

log = structlog.get_logger(__name__)


class _BodyTooLarge(Exception):
    pass


class Webhook:
    """The ``POST /webhook`` endpoint: verify, bound, parse, publish, answer."""

    def __init__(
        self,
        *,
        secret: bytes,
        bus: Bus,
        background: BackgroundFacts,
        stats: WebhookStats,
        metrics: IngressMetrics,
        confirm_timeout: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._clock = clock
        self._secret = secret
        self._bus = bus
        self._background = background
        self._stats = stats
        self._metrics = metrics
        self._confirm_timeout = confirm_timeout

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        status, events = 500, 0
        try:
            response, events = await self._answer(request)
            status = response.status
            return response
        except (ConnectionError, asyncio.CancelledError):
            status = 499  # the client went away before the answer
            raise
        finally:
            self._stats.record(status, events, time.perf_counter() - started)

    async def _answer(self, request: web.Request) -> tuple[web.Response, int]:
        encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
        if encoding != "identity":
            return _refuse(415, "Content-Encoding is not supported"), 0
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _refuse(413, "body over 1 MiB", close=True), 0
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            self._signature_rejected(request, "missing")
            return _refuse(400, f"{SIGNATURE_HEADER} is missing"), 0
        try:
            body = await _read_body(request, MAX_BODY_BYTES)
        except _BodyTooLarge:
            return _refuse(413, "body over 1 MiB", close=True), 0
        except TimeoutError:
            return _refuse(408, "body not received in time", close=True), 0
        except ClientPayloadError:
            return _refuse(400, "body could not be read", close=True), 0
        if not signature_matches(self._secret, body, signature):
            self._signature_rejected(request, "mismatch")
            return _refuse(401, f"{SIGNATURE_HEADER} does not match"), 0
        try:
            messages = parse_webhook(body, received_at=self._clock())
        except InvalidWebhook as exc:
            log.warning("webhook_refused", reason=exc.reason)
            return _refuse(400, exc.reason), 0
        for message in messages:
            for name in missing_fields(message.event):
                self._metrics.filled_in_fields.labels(name).inc()
                log.warning(
                    "webhook_event_field_filled_in",
                    field=name,
                    event_type=message.event_type,
                    webhook_event_id=message.webhook_event_id,
                )
        if messages:
            try:
                await publish_in_user_order(self._bus, messages, timeout=self._confirm_timeout)
            except PublishFailed as exc:
                self._metrics.unconfirmed_requests.inc()
                log.warning("webhook_unconfirmed", events=len(messages), reason=str(exc)[:300])
                return _refuse(503, "events not confirmed; redeliver"), 0
            self._metrics.events_accepted.inc(len(messages))
        return web.json_response({"status": "ok"}), len(messages)

    def _signature_rejected(self, request: web.Request, reason: str) -> None:
        source = request.remote or "unknown"
        self._metrics.signature_rejections.labels(reason).inc()
        log.warning("signature_rejected", source=source, reason=reason)
        self._background.signature_rejected(source, reason)


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes: reading stops as soon as it goes past."""
    body = bytearray()
    async with asyncio.timeout(BODY_READ_TIMEOUT):
        while chunk := await request.content.readany():
            body += chunk
            if len(body) > limit:
                raise _BodyTooLarge
    return bytes(body)


def _refuse(status: int, reason: str, *, close: bool = False) -> web.Response:
    response = web.json_response({"error": reason}, status=status)
    if close:
        response.force_close()
    return response


WEBHOOK: web.AppKey[Webhook] = web.AppKey("webhook", Webhook)
BACKGROUND: web.AppKey[BackgroundFacts] = web.AppKey("background_facts", BackgroundFacts)


def create_app(
    settings: IngressSettings, *, clock: Callable[[], datetime] = utcnow
) -> web.Application:
    """Ingress; ``clock`` (tests) stamps when each event was received."""
    app = create_base_app(
        SERVICE, client_max_size=MAX_BODY_BYTES, trusted_proxies=settings.trusted_proxies
    )
    use_bus(app, settings, SERVICE, publish_timeout=settings.ingress_confirm_timeout)
    metrics = IngressMetrics(app[REGISTRY])

    async def webhook_ctx(app: web.Application) -> AsyncIterator[None]:
        # After use_bus's context: the bus exists (connecting in the background).
        stats = WebhookStats()
        background = BackgroundFacts(
            app[BUS],
            app[FACTS],
            stats,
            metrics,
            timeout=settings.ingress_confirm_timeout,
        )
        app[WEBHOOK] = Webhook(
            secret=settings.line_channel_secret.get_secret_value().encode(),
            bus=app[BUS],
            background=background,
            stats=stats,
            metrics=metrics,
            confirm_timeout=settings.ingress_confirm_timeout,
            clock=clock,
        )
        app[BACKGROUND] = background
        background.start()
        yield
        await background.close()

    app.cleanup_ctx.append(webhook_ctx)

    async def webhook(request: web.Request) -> web.StreamResponse:
        return await request.app[WEBHOOK].handle(request)

    app.router.add_post("/webhook", webhook)
    return app
