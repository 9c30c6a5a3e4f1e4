"""A webhook body read leniently into one :class:`LineEventReceived` per event.

Only the envelope is checked: the body is UTF-8 JSON, an object with a string ``destination``
and an array ``events`` whose items are objects. Each event is kept whole, whatever its type and
whatever fields it carries (the SDK's ``WebhookParser`` would turn what it cannot validate into
``UnknownEvent``; the edge never drops what LINE sends). The few fields the bus message lifts out
of the event are read defensively:

- ``webhookEventId`` and ``timestamp`` are required by LINE's schema, so LINE always sends them.
  If one is ever missing or of the wrong type, the event still goes through rather than the whole
  request being refused, which would hold back every other event of the request (other students'
  messages) and make LINE redeliver a body that can never succeed. The id is then derived from
  the event's own content without ``deliveryContext`` (:func:`derived_event_id`), so a redelivery
  of the same event gets the same id and triage's deduplication still holds; the timestamp falls
  back to the time ingress received the request.
- ``source.userId`` (the ordering key) and ``deliveryContext.isRedelivery`` are taken only when
  they have the expected type.

What cannot be carried on the bus as the same JSON (``NaN``, ``Infinity``, numbers beyond a
double's range, lone UTF-16 surrogates from ``\\ud800`` escapes, nesting deeper than the
serializer allows) is refused with a reason: the bus message would not be the event that was
sent.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError
from soudan_shared.contracts import LineEventReceived, stable_id

DERIVED_ID_PREFIX = "derived-"
_MAX_TIMESTAMP_MS = 2**63 - 1  # what MongoDB and every consumer can store as an integer


class InvalidWebhook(ValueError):
    """The body is not a webhook request; ``reason`` is short and safe to answer and log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_webhook(body: bytes, *, received_at: datetime) -> list[LineEventReceived]:
    """One bus message per event of ``body``, in request order. Raises :class:`InvalidWebhook`."""
    payload = _load_json(body)
    if not isinstance(payload, dict):
        raise InvalidWebhook("body is not a JSON object")
    destination = payload.get("destination")
    if not isinstance(destination, str):
        raise InvalidWebhook("destination is missing or not a string")
    events = payload.get("events")
    if not isinstance(events, list):
        raise InvalidWebhook("events is missing or not an array")
    messages = []
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise InvalidWebhook(f"events[{index}] is not an object")
        messages.append(_message(destination, event, received_at, index))
    return messages


def derived_event_id(destination: str, event: dict[str, Any]) -> str:
    """A stable id for an event that came without ``webhookEventId``: its content, redelivery
    flag left out (LINE sets it on redelivery, nothing else changes)."""
    content = {k: v for k, v in event.items() if k != "deliveryContext"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return DERIVED_ID_PREFIX + stable_id("line.webhook_event", destination, canonical)


def missing_fields(event: dict[str, Any]) -> list[str]:
    """Which of LINE's always-present fields ``event`` lacks (ingress filled them in)."""
    missing = []
    if _str(event.get("webhookEventId")) is None:
        missing.append("webhookEventId")
    if _timestamp(event.get("timestamp")) is None:
        missing.append("timestamp")
    return missing


def _load_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidWebhook(f"body is not UTF-8 (byte {exc.start})") from exc
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise InvalidWebhook("body is nested too deeply") from exc
    except json.JSONDecodeError as exc:
        raise InvalidWebhook(f"body is not JSON: {exc.msg} at {exc.pos}") from exc
    except ValueError as exc:
        raise InvalidWebhook(f"body is not JSON: {exc}") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _message(
    destination: str, event: dict[str, Any], received_at: datetime, index: int
) -> LineEventReceived:
    webhook_event_id = _str(event.get("webhookEventId")) or derived_event_id(destination, event)
    timestamp = _timestamp(event.get("timestamp"))
    source = event.get("source")
    delivery = event.get("deliveryContext")
    try:
        message = LineEventReceived(
            id=stable_id("line.event_received", webhook_event_id),
            destination=destination,
            webhook_event_id=webhook_event_id,
            is_redelivery=isinstance(delivery, dict) and delivery.get("isRedelivery") is True,
            user_id=_str(source.get("userId")) if isinstance(source, dict) else None,
            event_type=_str(event.get("type")) or "",
            timestamp_ms=(
                timestamp if timestamp is not None else int(received_at.timestamp() * 1000)
            ),
            received_at=received_at,
            event=event,
        )
        # Serialize once now, so an event that cannot travel is refused before anything of
        # the request is published (the bus serializes again; it costs microseconds).
        message.to_json()
    except (ValidationError, PydanticSerializationError, ValueError) as exc:
        raise InvalidWebhook(
            f"events[{index}] cannot be carried as JSON (invalid Unicode or nested too deeply)"
        ) from exc
    return message


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _timestamp(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value <= _MAX_TIMESTAMP_MS:
        return value
    return None
