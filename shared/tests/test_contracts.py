from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError
from soudan_shared.contracts import (
    Fact,
    LineEventReceived,
    MessageRejected,
    SendText,
    StartBroadcast,
    parse_message,
    stable_id,
)

pytestmark = pytest.mark.unit


def _event(**overrides: object) -> LineEventReceived:
    fields: dict[str, object] = {
        "destination": "Udest",
        "webhook_event_id": "01H0000000000000000000000",
        "user_id": "U1234",
        "event_type": "message",
        "timestamp_ms": 1_700_000_000_000,
        "received_at": datetime(2026, 11, 1, tzinfo=UTC),
        "event": {"type": "message", "message": {"type": "text", "text": "こんにちは"}},
    }
    fields.update(overrides)
    return LineEventReceived(**fields)


def test_a_message_read_back_equals_the_message_sent() -> None:
    sent = _event()
    body = sent.to_json()
    assert json.loads(body)["schema"] == 1
    assert parse_message(LineEventReceived, body) == sent


def test_a_producer_cannot_add_a_field_the_contract_does_not_know() -> None:
    with pytest.raises(ValidationError):
        _event(surprise=1)


def test_a_consumer_ignores_fields_a_newer_producer_added() -> None:
    payload = json.loads(_event().to_json())
    payload["added_later"] = {"x": 1}
    parsed = parse_message(LineEventReceived, json.dumps(payload).encode())
    assert parsed.webhook_event_id == "01H0000000000000000000000"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"type": "command.send_text"}', "expected 'line.event_received'"),
        (b'{"type": "line.event_received", "schema": 99}', "newer"),
        (b'{"type": "line.event_received", "schema": 1}', "destination"),
    ],
)
def test_a_message_that_cannot_be_read_is_rejected_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(MessageRejected, match=reason):
        parse_message(LineEventReceived, body)


def test_times_are_kept_in_utc_and_naive_times_are_refused() -> None:
    jst = timezone(timedelta(hours=9))
    event = _event(received_at=datetime(2026, 11, 1, 9, 0, tzinfo=jst))
    assert event.received_at == datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
    assert event.received_at.utcoffset() == timedelta(0)
    with pytest.raises(ValidationError):
        _event(received_at=datetime(2026, 11, 1))


def test_send_text_counts_length_in_utf16_units_as_line_does() -> None:
    SendText(to="U1", texts=["あ" * 5000], purpose="other")
    with pytest.raises(ValidationError, match="UTF-16"):
        # An emoji outside the BMP is two UTF-16 units: 2,501 of them are 5,002 units.
        SendText(to="U1", texts=["😀" * 2501], purpose="other")


def test_send_text_carries_one_to_five_texts_and_no_other_message_type() -> None:
    with pytest.raises(ValidationError):
        SendText(to="U1", texts=[], purpose="other")
    with pytest.raises(ValidationError):
        SendText(to="U1", texts=["a"] * 6, purpose="other")
    with pytest.raises(ValidationError):
        SendText(to="U1", texts=["a"], purpose="other", image_url="https://x")  # type: ignore[call-arg]


def test_a_fact_has_a_dotted_type_and_json_safe_data() -> None:
    fact = Fact(type="case.opened", service="triage", data={"case_id": "c1"})
    assert parse_message(Fact, fact.to_json()) == fact
    with pytest.raises(ValidationError):
        Fact(type="opened", service="triage")
    with pytest.raises(ValidationError):
        Fact(type="case.opened", service="triage", data={"x": object()})


def test_stable_ids_are_the_same_for_the_same_cause() -> None:
    assert stable_id("reply.sent", "m1") == stable_id("reply.sent", "m1")
    assert stable_id("reply.sent", "m1") != stable_id("reply.sent", "m2")


def test_the_correlation_id_defaults_to_the_message_id() -> None:
    command = StartBroadcast(broadcast_id="b1", texts=["相談を受け付けています"])
    assert command.correlation_id == command.id
    assert StartBroadcast(broadcast_id="b1", texts=["x"], correlation_id="c").correlation_id == "c"
