"""Structured JSON logs (structlog) that never carry message text, tokens or passwords.

Configure once, at the entrypoint, with :func:`configure_logging`. Keys that may hold secrets or
a student's words are replaced by ``"[redacted]"`` wherever they appear; LINE user ids are written
as a keyed hash (HMAC-SHA256 with ``LOG_HASH_KEY``), the same pseudonym in every service, so one
user's trail can be followed without the id itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"

SECRET_KEYS = frozenset(
    {
        "text",
        "texts",
        "body",
        "message_text",
        "content",
        "token",
        "access_token",
        "channel_access_token",
        "reply_token",
        "replytoken",
        "password",
        "new_password",
        "secret",
        "channel_secret",
        "authorization",
        "cookie",
        "signature",
        "x-line-signature",
        "totp",
        "csrf_token",
    }
)
USER_ID_KEYS = frozenset({"user_id", "userid", "line_user_id", "to", "source_user"})


class UserIdHasher:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def __call__(self, user_id: str) -> str:
        digest = hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()
        return "u_" + digest[:16]


def _scrub(value: Any, hasher: UserIdHasher, depth: int = 0) -> Any:
    if depth > 4:
        return value
    if isinstance(value, dict):
        return {k: _scrub_item(k, v, hasher, depth) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v, hasher, depth + 1) for v in value]
    return value


def _scrub_item(key: Any, value: Any, hasher: UserIdHasher, depth: int) -> Any:
    name = str(key).lower()
    if name in SECRET_KEYS or name.endswith(("_token", "_password", "_secret")):
        return REDACTED if value is not None else None
    if name in USER_ID_KEYS and isinstance(value, str) and value:
        return hasher(value)
    return _scrub(value, hasher, depth + 1)


def scrubber(hasher: UserIdHasher) -> structlog.types.Processor:
    def scrub(
        _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            if key == "event":
                continue
            event_dict[key] = _scrub_item(key, event_dict[key], hasher, 0)
        return event_dict

    return scrub


def configure_logging(
    *, service: str, level: str = "INFO", hash_key: bytes, stream: Any = None
) -> None:
    """JSON lines on stderr for structlog and the standard library alike."""
    hasher = UserIdHasher(hash_key)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        scrubber(hasher),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            _add_service(service),
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that could echo frames or bodies at debug level stay at INFO or above.
    for noisy in ("aiormq", "aio_pika", "pymongo", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))


def _add_service(service: str) -> structlog.types.Processor:
    def add(
        _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict.setdefault("service", service)
        return event_dict

    return add
