from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from soudan_shared.logging import REDACTED, UserIdHasher, configure_logging

pytestmark = pytest.mark.unit


@pytest.fixture
def log_lines() -> io.StringIO:
    stream = io.StringIO()
    configure_logging(service="test", level="DEBUG", hash_key=b"key-1", stream=stream)
    return stream


def _records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_logs_are_json_lines_naming_the_service(log_lines: io.StringIO) -> None:
    structlog.get_logger("x").info("case_opened", case_id="c1")
    (record,) = _records(log_lines)
    assert record["event"] == "case_opened"
    assert record["service"] == "test"
    assert record["case_id"] == "c1"
    assert record["level"] == "info"


def test_message_text_tokens_and_passwords_never_reach_the_log(log_lines: io.StringIO) -> None:
    structlog.get_logger("x").info(
        "received",
        text="しにたい",
        texts=["つらい"],
        reply_token="rt-123",
        password="hunter2hunter2",
        nested={"access_token": "at-9", "ok": 1},
    )
    logging.getLogger("stdlib").warning("plain %s", "line", extra={"token": "tk"})
    raw = log_lines.getvalue()
    for secret in ("しにたい", "つらい", "rt-123", "hunter2hunter2", "at-9"):
        assert secret not in raw
    first = _records(log_lines)[0]
    assert first["text"] == REDACTED
    assert first["nested"] == {"access_token": REDACTED, "ok": 1}


def test_line_user_ids_are_written_as_a_keyed_pseudonym(log_lines: io.StringIO) -> None:
    user = "U4af4980629c8f3b1a9e8c2f5d1e3a1b2"
    structlog.get_logger("x").info("followed", user_id=user)
    structlog.get_logger("x").info("again", user_id=user)
    first, second = _records(log_lines)
    assert user not in log_lines.getvalue()
    assert first["user_id"] == second["user_id"] == UserIdHasher(b"key-1")(user)
    assert UserIdHasher(b"key-2")(user) != first["user_id"]
