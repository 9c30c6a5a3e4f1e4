"""Every message on the bus, defined once.

Each message is a frozen pydantic model with a literal ``type``, a ``schema`` version, a stable
``id`` and a ``correlation_id``. Producers build them with unknown fields forbidden; consumers
read them with :func:`parse_message`, which ignores fields it does not know (a newer producer may
add some) and upcasts older schema versions in one place (:data:`_UPCASTERS`).

Names say what happened (``LineEventReceived``) or what is asked (``SendText``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

MAX_TEXT_UTF16_UNITS = 5000
FACT_TYPE_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$"
MAX_MESSAGES_PER_REQUEST = 5


def new_id() -> str:
    return uuid.uuid4().hex


def stable_id(*parts: str) -> str:
    """An id derived from what caused it, so a redelivered cause yields the same id."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "soudan:" + "\x1f".join(parts)).hex


def utcnow() -> datetime:
    return _to_utc(datetime.now(UTC))


def _to_utc(value: datetime) -> datetime:
    """UTC, to the millisecond: what BSON keeps, so a time reads back equal to what was written."""
    return value.astimezone(UTC).replace(microsecond=value.microsecond // 1000 * 1000)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]


class Message(BaseModel):
    """Base of every bus message."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    SCHEMA: ClassVar[int] = 1

    type: str
    schema_version: int = Field(default=1, alias="schema", ge=1)
    id: str = Field(default_factory=new_id, min_length=1, max_length=128)
    correlation_id: str = Field(default="", max_length=128)

    def model_post_init(self, context: Any, /) -> None:
        if not self.correlation_id:
            object.__setattr__(self, "correlation_id", self.id)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class LineEventReceived(Message):
    """One event of a LINE webhook request, exactly as LINE sent it (``event`` is kept whole)."""

    type: Literal["line.event_received"] = "line.event_received"
    destination: str
    webhook_event_id: str = Field(min_length=1)
    is_redelivery: bool = False
    user_id: str | None = Field(default=None, description="source.userId, when the event has one")
    event_type: str
    timestamp_ms: int = Field(description="the event's own timestamp (ms since the epoch)")
    received_at: UtcDatetime
    event: dict[str, Any]


def _check_text(text: str) -> str:
    units = len(text.encode("utf-16-le")) // 2
    if units > MAX_TEXT_UTF16_UNITS:
        raise ValueError(f"text is {units} UTF-16 code units; LINE allows {MAX_TEXT_UTF16_UNITS}")
    if not text.strip():
        raise ValueError("text is empty")
    return text


LineText = Annotated[str, AfterValidator(_check_text)]

ReplyPurpose = Literal[
    "greeting",
    "policy",
    "school_type_question",
    "school_type_answer",
    "out_of_hours",
    "urgent_out_of_hours",
    "congestion",
    "media_refused",
    "counselor_reply",
    "emergency",
    "menu_hours",
    "menu_inquiry",
    "other",
    "wait_notice",
    "checkin",
    "checkin_thanks",
]


class SendText(Message):
    """Ask dispatch to send 1–5 texts to one user. Text only, by construction (rule 第5(1))."""

    type: Literal["command.send_text"] = "command.send_text"
    to: str = Field(min_length=1, description="LINE user id")
    texts: list[LineText] = Field(min_length=1, max_length=MAX_MESSAGES_PER_REQUEST)
    purpose: ReplyPurpose
    reply_token: str | None = None
    reply_token_received_at: UtcDatetime | None = None
    case_id: str | None = None
    staff_id: str | None = None
    quick_reply: list[QuickReplyOption] = Field(default_factory=list, max_length=13)


class QuickReplyOption(BaseModel):
    """A quick-reply button that answers with a postback (still text-only content)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str = Field(min_length=1, max_length=20)
    data: str = Field(min_length=1, max_length=300)
    display_text: str | None = Field(default=None, max_length=300)


class StartBroadcast(Message):
    """Ask dispatch to send one of the section's fixed announcements to many users."""

    type: Literal["command.start_broadcast"] = "command.start_broadcast"
    broadcast_id: str = Field(min_length=1)
    texts: list[LineText] = Field(min_length=1, max_length=MAX_MESSAGES_PER_REQUEST)
    audience: Literal["registered", "target_group"] = "registered"
    method: Literal["multicast", "broadcast"] = "multicast"
    force: bool = False
    requested_by: str | None = None
    template: str | None = Field(default=None, max_length=40)
    """Which announcement of ``messages.yaml`` (``open_now``, ``period_notice``), for the lists."""

    @property
    def texts_digest(self) -> str:
        return texts_digest(self.texts)


def texts_digest(texts: Sequence[str]) -> str:
    """A digest of an announcement's exact texts: tells "the same announcement again" apart
    without carrying the text in facts."""
    return hashlib.sha256("\x1f".join(texts).encode()).hexdigest()


class Fact(Message):
    """Something that happened, for the event log and the monthly report: ``{id, type, at,
    service, data}``.

    ``type`` is dotted (``case.opened``, ``security.login_failed``); ``at`` is UTC; ``data``
    carries no message text, token or password.
    """

    type: str = Field(max_length=100, pattern=FACT_TYPE_PATTERN)
    at: UtcDatetime = Field(default_factory=utcnow)
    service: str = Field(min_length=1, max_length=40)
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("data")
    @classmethod
    def _json_safe(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"data must be plain JSON (str, number, bool, list, dict): {exc}"
            ) from exc
        return value


MAX_FACTS_PER_BATCH = 100


class FactBatch(Message):
    """The facts of one cause (one handled event) in one bus message: one publish, one confirm,
    one delivery and one ack instead of one of each per fact (issue 17).

    Nobody handles a batch: the bus hands each of its facts to the handlers of facts as if it
    had come alone (``Bus.consume``, ``Bus.subscribe``), and acknowledges the batch once every
    one of them is handled. Its routing key is ``facts.<service>``, outside ``fact.#``: a
    consumer that binds fact types is bound to batches by the bus, which then filters their
    facts by its bindings.
    """

    type: Literal["facts"] = "facts"
    facts: list[Fact] = Field(min_length=1, max_length=MAX_FACTS_PER_BATCH)

    @classmethod
    def of(cls, facts: Sequence[Fact]) -> FactBatch:
        """The batch of ``facts`` (at least one, from one service); its id follows from theirs,
        so the batch of a redelivered cause is the same message again."""
        services = {f.service for f in facts}
        if len(services) > 1:
            raise ValueError(f"a batch holds the facts of one service, not {sorted(services)}")
        return cls(
            id=stable_id("facts", *(f.id for f in facts)),
            correlation_id=facts[0].correlation_id,
            facts=list(facts),
        )

    @property
    def service(self) -> str:
        return self.facts[0].service


def unbatched(messages: Sequence[Message]) -> list[Message]:
    """``messages`` with each :class:`FactBatch` replaced by its facts (what a consumer sees)."""
    out: list[Message] = []
    for message in messages:
        out.extend(message.facts if isinstance(message, FactBatch) else (message,))
    return out


SendText.model_rebuild()

M = TypeVar("M", bound=Message)


class MessageRejected(ValueError):
    """A bus message that can never be handled (wrong shape, unknown version)."""


# (model name, from schema) -> function turning a payload of that version into the next one.
_UPCASTERS: dict[tuple[str, int], Any] = {}


def parse_message(model: type[M], body: bytes) -> M:
    """Read a message as a consumer: ignore unknown fields, upcast old versions, check the rest."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageRejected(f"body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise MessageRejected("body is not a JSON object")
    expected = model.model_fields["type"].default
    if isinstance(expected, str) and payload.get("type") != expected:
        raise MessageRejected(f"type is {payload.get('type')!r}, expected {expected!r}")
    kind = str(payload.get("type"))
    version = payload.get("schema", 1)
    if not isinstance(version, int) or version < 1:
        raise MessageRejected(f"schema version {version!r} is not a positive integer")
    while version < model.SCHEMA:
        upcast = _UPCASTERS.get((model.__name__, version))
        if upcast is None:
            raise MessageRejected(f"no upcaster for {model.__name__} schema {version}")
        payload = upcast(payload)
        version = payload["schema"]
    if version > model.SCHEMA:
        raise MessageRejected(
            f"{kind} schema {version} is newer than this consumer's {model.SCHEMA}"
        )
    known = {f.alias or name for name, f in model.model_fields.items()} | set(model.model_fields)
    try:
        return model.model_validate({k: v for k, v in payload.items() if k in known})
    except ValidationError as exc:
        raise MessageRejected(_short_errors(exc)) from exc


def _short_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


# -- the student's chat while a counselor works: read marks and the typing animation ---------

LOADING_SECONDS_MIN = 5
LOADING_SECONDS_MAX = 60
LOADING_SECONDS_STEP = 5  # LINE takes 5, 10, ... 60 seconds, nothing in between


class MarkRead(Message):
    """Ask dispatch to mark a student's messages as read (既読), up to and including
    ``message_id``, with that message's ``markAsReadToken`` (LINE marks it and every earlier
    message of the chat).

    Sent by the console only when a counselor has the conversation in front of them (the case
    opened, or a new message shown on an open case page); nothing automatic ever sends one.
    The id is derived from ``message_id`` (:func:`mark_read_id`), so marking the same message
    twice is one command. ``token`` is a credential of LINE's: kept out of ``repr``, logs and
    facts.
    """

    type: Literal["command.mark_read"] = "command.mark_read"
    user_id: str = Field(min_length=1, description="LINE user id")
    message_id: str = Field(min_length=1, max_length=128, description="the stored message's id")
    token: str = Field(min_length=1, max_length=2000, repr=False)
    case_id: str | None = None
    staff_id: str | None = None


def mark_read_id(message_id: str) -> str:
    return stable_id("command.mark_read", message_id)


class StartLoading(Message):
    """Ask dispatch to show LINE's loading animation ("入力中…") in a student's chat for
    ``seconds`` while a counselor writes a reply.

    Short-lived: once ``seconds`` have passed since ``requested_at`` it means nothing any more
    and dispatch drops it (it shows only what is left, in LINE's steps of 5 seconds); it is
    also dropped when a message to the student went out after it was asked for (the animation
    would outlive the reply it announced).
    """

    type: Literal["command.start_loading"] = "command.start_loading"
    user_id: str = Field(min_length=1, description="LINE user id")
    seconds: int = Field(
        ge=LOADING_SECONDS_MIN, le=LOADING_SECONDS_MAX, multiple_of=LOADING_SECONDS_STEP
    )
    requested_at: UtcDatetime = Field(default_factory=utcnow)
    case_id: str | None = None
    staff_id: str | None = None


AnyMessage = LineEventReceived | SendText | StartBroadcast | MarkRead | StartLoading | Fact
