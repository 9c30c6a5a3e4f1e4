"""A plan: everything one LINE event does, decided once, stored, then applied.

Triage decides what an event does by reading the store (the user, the open case, the user's
recent messages, …) and writes the decision down as a :class:`Plan` before it changes anything.
The plan is stored with the event's ``webhookEventId`` (:mod:`soudan_triage.store`); applying it
is idempotent (fixed ids, ``$set`` of fixed values, inserts that tolerate a duplicate), and the
commands and facts it publishes have ids derived from the event. So if the process dies anywhere
between deciding and acknowledging, the redelivered event replays the same plan: the same case,
the same reply (dispatch sends a command id once), the same facts (reporting records a fact id
once) — never a second decision made from a half-changed store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from soudan_shared.contracts import Fact, SendText


@dataclass
class Plan:
    """The effects of one event. Empty dicts and ``None`` mean "nothing to do there"."""

    outcome: str
    user_id: str | None = None
    #: ``users``: ``$set`` and ``$setOnInsert`` (the user is upserted when either is given)
    user_set: dict[str, Any] = field(default_factory=dict)
    user_insert: dict[str, Any] = field(default_factory=dict)
    #: triage's own per-user state: ``$set`` and ``$max``
    state_set: dict[str, Any] = field(default_factory=dict)
    state_max: dict[str, Any] = field(default_factory=dict)
    #: a case opened by this event (a whole ``Case`` document) ...
    case_insert: dict[str, Any] | None = None
    #: ... or the open case this event changes
    case_id: str | None = None
    case_set: dict[str, Any] = field(default_factory=dict)
    case_keywords: list[str] = field(default_factory=list)
    #: ``RiskFound`` documents added to the open case
    case_risks: list[dict[str, str]] = field(default_factory=list)
    #: a ``StoredMessage`` document
    message_insert: dict[str, Any] | None = None
    #: ``{"_id": stored message id, "unsent_at": datetime}``
    message_unsend: dict[str, Any] | None = None
    #: the message's reply token ``{"token", "received_at", "message_id"}`` (``reply_tokens``)
    reply_token: dict[str, Any] | None = None
    #: a check-in answer ``{"case_id", "answer", "answer_label", "at"}``, kept on that case
    #: (closed, maybe not the open one) unless it has an answer already
    checkin_answer: dict[str, Any] | None = None
    #: ``{"case_id", "departure": CaseDeparture document}``: a student in danger left
    departures: list[dict[str, Any]] = field(default_factory=list)
    commands: list[SendText] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)

    def to_document(self) -> dict[str, Any]:
        doc = {name: getattr(self, name) for name in _PLAIN}
        doc["commands"] = [c.model_dump(mode="json", by_alias=True) for c in self.commands]
        doc["facts"] = [f.model_dump(mode="json", by_alias=True) for f in self.facts]
        return doc

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Plan:
        plain = {name: doc[name] for name in _PLAIN if name in doc}
        return cls(
            **plain,
            commands=[SendText.model_validate(c) for c in doc.get("commands", [])],
            facts=[Fact.model_validate(f) for f in doc.get("facts", [])],
        )


_PLAIN = (
    "outcome",
    "user_id",
    "user_set",
    "user_insert",
    "state_set",
    "state_max",
    "case_insert",
    "case_id",
    "case_set",
    "case_keywords",
    "case_risks",
    "message_insert",
    "message_unsend",
    "reply_token",
    "checkin_answer",
    "departures",
)
