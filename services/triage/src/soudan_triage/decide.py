"""What each LINE event does: triage's rules, turned into a :class:`~soudan_triage.plan.Plan`.

The decisions read the store but never write it; :class:`~soudan_triage.service.Triage` stores
the plan and applies it. Every decision is also a fact, so the monthly report can count it.

Times. Decisions about hours use the event's own ``timestamp`` (when the student sent it, and
the same on every redelivery); congestion is measured now, from the queue as it is.

Order. One user's events arrive in order except when LINE redelivers an older one. An older
**message**, **unsend** or **menu postback** is applied like any other: a message still belongs
to the student's case (it goes to the open case, or opens one) and is stored with its own time,
so the conversation sorts it where it belongs. An older **follow/unfollow** than the last one
applied, or an older **school-type answer** than the last one applied, changes nothing: it is
recorded as ``line.event_ignored`` with reason ``stale`` (a redelivered follow must not
re-register a user who blocked the account since).

Auto-replies (one per event at most):

- text outside hours (not accepting new cases, unless a conversation under way goes on: the
  case is active, or the service is open and the case was accepted before the cut-off) →
  ``out_of_hours`` naming the next opening; if the message is urgent, ``urgent_out_of_hours``
  with the 24-hour help lines instead. Each is sent once per user per next opening (a student
  writing ten messages at night gets one reply, and one more if a later message is urgent);
- a new case in hours while the service is congested → ``congestion`` with the cases waiting
  before the student and the estimated wait (once: only the message that opens the case can get
  it; ``Case.congestion_replied`` records it); never to an urgent case, whose student is not
  told to wait (it goes first). The later "we will answer soon" (``wait_notice``) is
  :mod:`soudan_triage.timers`' business;
- image, video, audio, file, location, sticker → ``media_refused``, at most once per user per
  ``auto_reply.media_refused_interval_minutes``; nothing of the content is fetched or stored
  (only that such a message came, in the open case if there is one: it opens none);
- follow → greeting, policy, inquiry page and the school-type question (quick replies
  ``school_type=<key>``; left out if the user already answered it);
- postback ``school_type=<key>`` → the acknowledgement for eligible or not (対象外: answered all
  the same, the user's cases marked ``out_of_scope``);
- postback ``menu=hours`` / ``menu=policy`` / ``menu=inquiry`` (the rich menu) → the hours
  (from ``hours.yaml``), the operating policy, the inquiry page;
- postback ``checkin=<case id>&answer=<key>`` (the check-in after a close, sent by
  :mod:`soudan_triage.timers`) → the choice's reply; the answer is kept with the case it was
  asked about, the first tap only.

Unfollow (block) by a student whose case is urgent (and open) or has an emergency open marks
the case (``departure``) and publishes ``case.student_left``: the console alerts the
supervisors live and mails ``EMERGENCY_RECIPIENTS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import parse_qsl

from soudan_shared import fact_types as F
from soudan_shared.config import SoudanConfig
from soudan_shared.contracts import (
    LineEventReceived,
    QuickReplyOption,
    ReplyPurpose,
    SendText,
    stable_id,
)
from soudan_shared.facts import Facts
from soudan_shared.records import (
    READ_TOKEN,
    Case,
    CaseDeparture,
    RiskFound,
    StoredMessage,
    incoming_message_id,
)

from soudan_triage import congestion
from soudan_triage.hours import Hours, HoursStatus, describe, format_moment
from soudan_triage.plan import Plan
from soudan_triage.store import KEEP_UNSENT, TriageStore
from soudan_triage.urgency import Detection, Detector

MEDIA_KINDS: Final = frozenset({"image", "video", "audio", "file", "location", "sticker"})
SCHOOL_TYPE_DATA: Final = "school_type"
MENU_DATA: Final = "menu"
MENU_TOPICS: Final = ("hours", "policy", "inquiry")


CHECKIN_DATA: Final = "checkin"
_CASE_ID: Final = re.compile(r"[0-9a-f]{32}")
_CHOICE_KEY: Final = re.compile(r"[a-z][a-z0-9_]{0,39}")


def checkin_postback(case_id: str, key: str) -> str:
    """The postback data of a check-in answer: ``checkin=<case id>&answer=<choice key>``."""
    return f"{CHECKIN_DATA}={case_id}&answer={key}"


def school_type_postback(key: str) -> str:
    return f"{SCHOOL_TYPE_DATA}={key}"


def menu_postback(topic: str) -> str:
    """The postback data of a rich-menu entry: ``menu=hours``, ``menu=policy``, ``menu=inquiry``."""
    return f"{MENU_DATA}={topic}"


def event_time(event: LineEventReceived) -> datetime:
    try:
        return datetime.fromtimestamp(event.timestamp_ms / 1000, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(f"timestamp {event.timestamp_ms} is not a time") from exc


@dataclass(frozen=True)
class _Ctx:
    event: LineEventReceived
    user_id: str
    at: datetime  # when the student did it (the event's timestamp)
    now: datetime  # when triage decides
    config: SoudanConfig
    hours: Hours
    detector: Detector


class Decider:
    def __init__(self, store: TriageStore, facts: Facts) -> None:
        self.store = store
        self.facts = facts

    async def decide(
        self,
        event: LineEventReceived,
        *,
        config: SoudanConfig,
        hours: Hours,
        detector: Detector,
        now: datetime,
    ) -> Plan:
        source = event.event.get("source")
        source_type = source.get("type") if isinstance(source, dict) else None
        if event.event.get("mode") == "standby":
            return self._ignored(event, "standby")
        if not event.user_id or source_type != "user":
            return self._ignored(event, "not_one_to_one")
        c = _Ctx(event, event.user_id, event_time(event), now, config, hours, detector)
        kind = event.event_type
        if kind == "follow":
            return await self._follow(c)
        if kind == "unfollow":
            return await self._unfollow(c)
        if kind == "message":
            message = event.event.get("message")
            if not isinstance(message, dict) or not message.get("id"):
                return self._ignored(event, "malformed")
            if message.get("type") == "text":
                return await self._text(c, message)
            return await self._media(c, message)
        if kind == "unsend":
            return await self._unsend(c)
        if kind == "postback":
            return await self._postback(c)
        return self._ignored(event, "unhandled_type")

    # -- follow / unfollow -----------------------------------------------------------------

    async def _follow(self, c: _Ctx) -> Plan:
        state = await self.store.user_state(c.user_id)
        if _older(c, state.get("follow_ms")):
            return self._ignored(c.event, "stale")
        user = await self.store.user(c.user_id)
        plan = Plan(outcome="followed", user_id=c.user_id)
        plan.user_set = {"registered": True, "followed_at": c.at, "unfollowed_at": None}
        plan.user_set["updated_at"] = c.now
        if user is None:
            plan.user_insert = {"school_type": None, "eligible": None}
        plan.state_set["follow_ms"] = c.event.timestamp_ms
        messages = c.config.messages
        texts = [messages.follow.greeting, messages.follow.policy, messages.inquiry]
        quick: list[QuickReplyOption] = []
        if not (user and user.get("school_type")):
            texts.append(messages.school_type.question)
            quick = [
                QuickReplyOption(
                    label=choice.label,
                    data=school_type_postback(choice.key),
                    display_text=choice.label,
                )
                for choice in messages.school_type.choices
            ]
        follow = c.event.event.get("follow")
        unblocked = bool(follow.get("isUnblocked")) if isinstance(follow, dict) else False
        plan.facts.append(
            self._fact(c, F.LINE_FOLLOWED, {"user_id": c.user_id, "unblocked": unblocked})
        )
        self._reply(plan, c, "greeting", texts, quick_reply=quick)
        return plan

    async def _unfollow(self, c: _Ctx) -> Plan:
        state = await self.store.user_state(c.user_id)
        if _older(c, state.get("follow_ms")):
            return self._ignored(c.event, "stale")
        plan = Plan(outcome="unfollowed", user_id=c.user_id)
        plan.user_set = {"registered": False, "unfollowed_at": c.at, "updated_at": c.now}
        plan.user_insert = {"followed_at": c.at, "school_type": None, "eligible": None}
        plan.state_set["follow_ms"] = c.event.timestamp_ms
        plan.facts.append(self._fact(c, F.LINE_UNFOLLOWED, {"user_id": c.user_id}))
        for doc in await self.store.cases_in_danger(c.user_id):
            case = Case.model_validate(doc)
            departure = CaseDeparture(
                at=c.at,
                event_id=c.event.webhook_event_id,
                urgent=case.urgent,
                emergency_ids=list(case.open_emergencies),
            )
            plan.departures.append({"case_id": case.id, "departure": departure.to_document()})
            plan.facts.append(
                self._fact(
                    c,
                    F.CASE_STUDENT_LEFT,
                    {
                        "case_id": case.id,
                        "user_id": c.user_id,
                        "urgent": case.urgent,
                        "emergency_ids": list(case.open_emergencies),
                        "case_state": case.state,
                    },
                    also=case.id,
                )
            )
        return plan

    # -- messages -----------------------------------------------------------------------------

    async def _text(self, c: _Ctx, message: dict[str, Any]) -> Plan:
        text = str(message.get("text") or "")
        line_id = str(message["id"])
        stored_id = incoming_message_id(line_id)
        # A case (or an incoming message) is only ever stored with its user (the plan that
        # stores the first one upserts the user first): a user with an open case is known, and
        # a user not known has no case and no earlier messages to read.
        open_case = await self.store.open_case(c.user_id)
        user = None if open_case is not None else await self.store.user(c.user_id)
        known = open_case is not None or user is not None
        state = await self.store.user_state(c.user_id)
        plan = Plan(outcome="message", user_id=c.user_id)
        if not known:
            plan.user_insert = _registered_on_first_message(c)
        detection = await self._detect(c, text, stored_id, known=known)
        status = c.hours.status(c.at)
        new_case = open_case is None
        if open_case is None:
            profile = user or {}
            case = Case(
                id=stable_id("case", c.event.webhook_event_id),
                user_id=c.user_id,
                urgent=detection.urgent,
                keywords=list(detection.keywords),
                risks=[RiskFound.model_validate(r.to_json()) for r in detection.risks],
                out_of_scope=profile.get("eligible") is False,
                school_type=profile.get("school_type"),
                opened_at=c.at,
                opened_in_hours=status.accepting,
                waiting_since=c.at,
                last_message_at=c.at,
                flagged_urgent_at=c.at if detection.urgent else None,
            )
            plan.facts.append(
                self._fact(
                    c,
                    F.CASE_OPENED,
                    {
                        "case_id": case.id,
                        "user_id": c.user_id,
                        "in_hours": status.accepting,
                        "out_of_scope": case.out_of_scope,
                        "school_type": case.school_type,
                        "urgent": case.urgent,
                    },
                )
            )
            newly_urgent = detection.urgent
        else:
            case = Case.model_validate(open_case)
            plan.case_set["last_message_at"] = max(case.last_message_at, c.at)
            newly_urgent = detection.urgent and not case.urgent
            if detection.urgent:
                plan.case_keywords = list(detection.keywords)
                plan.case_risks = [r.to_json() for r in detection.risks]
            if newly_urgent:
                plan.case_set.update({"urgent": True, "flagged_urgent_at": c.at})
        plan.case_id = case.id
        if newly_urgent:
            plan.facts.append(
                self._fact(
                    c,
                    F.CASE_FLAGGED_URGENT,
                    {
                        "case_id": case.id,
                        "user_id": c.user_id,
                        "keywords": list(detection.keywords),
                        "risks": list(detection.categories),
                        "in_hours": status.accepting,
                    },
                )
            )
        early_unsends: dict[str, datetime] = dict(state.get("unsent") or {})
        unsent_at = early_unsends.pop(line_id, None)
        if unsent_at is not None:
            plan.state_set["unsent"] = early_unsends
        plan.message_insert = StoredMessage(
            id=stored_id,
            case_id=case.id,
            user_id=c.user_id,
            direction="in",
            kind="text",
            text=None if unsent_at else text,
            at=c.at,
            unsent_at=unsent_at,
        ).to_document()
        _keep_read_token(plan.message_insert, message)
        plan.facts.append(
            self._fact(
                c,
                F.MESSAGE_RECEIVED,
                {
                    "case_id": case.id,
                    "user_id": c.user_id,
                    "message_id": stored_id,
                    "chars": len(text),
                },
            )
        )
        token = c.event.event.get("replyToken")
        if isinstance(token, str) and token:
            # for a counselor's reply that comes while LINE still honours it (free)
            plan.reply_token = {
                "token": token,
                "received_at": c.event.received_at,
                "message_id": stored_id,
            }

        goes_on = not new_case and (status.open or case.state == "active")
        if not status.accepting and not goes_on:
            self._out_of_hours(plan, c, status, state, urgent=detection.urgent, case_id=case.id)
        elif new_case:
            measured = await congestion.measure(
                self.store.db, c.config.congestion, c.now, exclude_case=case.id
            )
            plan.facts.append(self._fact(c, F.CONGESTION_MEASURED, measured.fact_data(), at=c.now))
            # an urgent case goes first in the queue: its student is never told to wait
            if measured.congested and not detection.urgent:
                case.congestion_replied = True
                text = congestion.wait_text(
                    c.config.messages.auto_reply.congested,
                    ahead=measured.waiting,
                    seconds=measured.estimated_wait_seconds,
                )
                self._reply(plan, c, "congestion", [text], case_id=case.id)
        if new_case:
            plan.case_insert = case.to_document()
        if token and any(command.reply_token == token for command in plan.commands):
            # The automatic reply answers with this token: dispatch's claim of it for that reply
            # stores it (claim_reply_token), and after that no counselor's reply could use it.
            plan.reply_token = None
        return plan

    async def _detect(self, c: _Ctx, text: str, stored_id: str, *, known: bool) -> Detection:
        """``known``: whether the user may have earlier messages (an unknown user has none)."""
        detection = c.detector.detect(text)
        if detection.urgent:
            return detection
        if not known:
            return c.detector.detect_across((), text)
        window = c.config.keywords.window
        earlier = await self.store.recent_texts(
            c.user_id,
            until=c.at,
            since=c.at - timedelta(minutes=window.minutes),
            limit=window.messages - 1,
            exclude=stored_id,
        )
        return c.detector.detect_across(earlier, text)

    def _out_of_hours(
        self,
        plan: Plan,
        c: _Ctx,
        status: HoursStatus,
        state: dict[str, Any],
        *,
        urgent: bool,
        case_id: str,
    ) -> None:
        replies = c.config.messages.auto_reply
        opening = status.next_open
        key = opening.isoformat() if opening else "none"
        next_open = format_moment(opening) if opening else replies.no_next_open
        if urgent and state.get("urgent_out_of_hours_for") != key:
            plan.state_set.update({"urgent_out_of_hours_for": key, "out_of_hours_for": key})
            text = replies.out_of_hours_urgent.format(next_open=next_open)
            self._reply(plan, c, "urgent_out_of_hours", [text], case_id=case_id)
        elif not urgent and state.get("out_of_hours_for") != key:
            plan.state_set["out_of_hours_for"] = key
            text = replies.out_of_hours.format(next_open=next_open)
            self._reply(plan, c, "out_of_hours", [text], case_id=case_id)

    async def _media(self, c: _Ctx, message: dict[str, Any]) -> Plan:
        kind = str(message.get("type") or "unknown")
        user = await self.store.user(c.user_id)
        state = await self.store.user_state(c.user_id)
        # an unknown user has no case (see _text)
        open_case = await self.store.open_case(c.user_id) if user is not None else None
        plan = Plan(outcome="media_refused", user_id=c.user_id)
        if user is None:
            plan.user_insert = _registered_on_first_message(c)
        case_id = None
        if open_case is not None:
            case_id = str(open_case["_id"])
            plan.case_id = case_id
            plan.case_set["last_message_at"] = max(open_case["last_message_at"], c.at)
            plan.message_insert = StoredMessage(
                id=incoming_message_id(str(message["id"])),
                case_id=case_id,
                user_id=c.user_id,
                direction="in",
                kind=kind,
                text=None,
                at=c.at,
            ).to_document()
            _keep_read_token(plan.message_insert, message)
        interval = timedelta(minutes=c.config.messages.auto_reply.media_refused_interval_minutes)
        last: datetime | None = state.get("media_replied_at")
        reply = last is None or c.at - last >= interval
        if reply:
            plan.state_max["media_replied_at"] = c.at
            self._reply(
                plan,
                c,
                "media_refused",
                [c.config.messages.auto_reply.media_refused],
                case_id=case_id,
            )
        plan.facts.append(
            self._fact(
                c,
                F.MEDIA_REFUSED,
                {"user_id": c.user_id, "kind": kind, "replied": reply, "case_id": case_id},
            )
        )
        return plan

    async def _unsend(self, c: _Ctx) -> Plan:
        unsend = c.event.event.get("unsend")
        line_id = unsend.get("messageId") if isinstance(unsend, dict) else None
        if not line_id:
            return self._ignored(c.event, "malformed")
        stored_id = incoming_message_id(str(line_id))
        stored = await self.store.message(stored_id)
        if stored is not None and stored.get("user_id") != c.user_id:
            return self._ignored(c.event, "not_own_message")
        plan = Plan(outcome="unsent", user_id=c.user_id)
        case_id = None
        if stored is not None:
            case_id = stored.get("case_id")
            plan.message_unsend = {"_id": stored_id, "unsent_at": c.at}
        else:  # the message has not arrived yet: remember to store it erased
            state = await self.store.user_state(c.user_id)
            early = dict(state.get("unsent") or {})
            early[str(line_id)] = c.at
            plan.state_set["unsent"] = dict(
                sorted(early.items(), key=lambda kv: kv[1])[-KEEP_UNSENT:]
            )
        plan.facts.append(
            self._fact(
                c,
                F.MESSAGE_UNSENT,
                {"user_id": c.user_id, "message_id": stored_id, "case_id": case_id},
            )
        )
        return plan

    # -- postbacks ----------------------------------------------------------------------------

    async def _postback(self, c: _Ctx) -> Plan:
        postback = c.event.event.get("postback")
        data = postback.get("data") if isinstance(postback, dict) else None
        fields = dict(parse_qsl(data)) if isinstance(data, str) else {}
        if SCHOOL_TYPE_DATA in fields:
            return await self._school_type(c, fields[SCHOOL_TYPE_DATA])
        topic = fields.get(MENU_DATA)
        if topic in MENU_TOPICS:
            return self._menu(c, topic)
        if CHECKIN_DATA in fields:
            return await self._checkin_answer(c, fields[CHECKIN_DATA], fields.get("answer", ""))
        return self._ignored(c.event, "unknown_postback")

    async def _checkin_answer(self, c: _Ctx, case_id: str, key: str) -> Plan:
        """The student's answer to the check-in of ``case_id`` (closed, maybe not their latest
        case): kept with that case, the first tap only; a second tap changes nothing."""
        if not (_CASE_ID.fullmatch(case_id) and _CHOICE_KEY.fullmatch(key)):
            return self._ignored(c.event, "malformed_checkin")
        choice = next((ch for ch in c.config.messages.checkin.choices if ch.key == key), None)
        if choice is None:
            return self._ignored(c.event, "unknown_checkin_answer")
        doc = await self.store.case(case_id)
        checkin = (doc or {}).get("checkin") or {}
        if doc is None or doc.get("user_id") != c.user_id or checkin.get("state") != "sent":
            return self._ignored(c.event, "unknown_checkin")
        if checkin.get("answer"):
            return self._ignored(c.event, "checkin_already_answered")
        plan = Plan(outcome="checkin_answered", user_id=c.user_id)
        plan.checkin_answer = {
            "case_id": case_id,
            "answer": choice.key,
            "answer_label": choice.label,
            "at": c.at,
        }
        plan.facts.append(
            self._fact(
                c,
                F.CHECKIN_ANSWERED,
                {"case_id": case_id, "user_id": c.user_id, "choice": choice.key},
            )
        )
        self._reply(plan, c, "checkin_thanks", [choice.reply], case_id=case_id)
        return plan

    async def _school_type(self, c: _Ctx, key: str) -> Plan:
        question = c.config.messages.school_type
        choice = next((ch for ch in question.choices if ch.key == key), None)
        if choice is None:
            return self._ignored(c.event, "unknown_school_type")
        state = await self.store.user_state(c.user_id)
        if _older(c, state.get("school_type_ms")):
            return self._ignored(c.event, "stale")
        user = await self.store.user(c.user_id)
        plan = Plan(outcome="school_type_set", user_id=c.user_id)
        plan.user_set = {"school_type": key, "eligible": choice.eligible, "updated_at": c.now}
        if user is None:
            plan.user_insert = {"registered": True, "followed_at": c.at, "unfollowed_at": None}
        plan.state_set["school_type_ms"] = c.event.timestamp_ms
        open_case = await self.store.open_case(c.user_id) if user is not None else None
        case_id = None
        if open_case is not None:
            case_id = str(open_case["_id"])
            plan.case_id = case_id
            plan.case_set = {"school_type": key, "out_of_scope": not choice.eligible}
        plan.facts.append(
            self._fact(
                c,
                F.SCHOOL_TYPE_SET,
                {"user_id": c.user_id, "school_type": key, "eligible": choice.eligible},
            )
        )
        answer = question.answered_eligible if choice.eligible else question.answered_not_eligible
        self._reply(plan, c, "school_type_answer", [answer], case_id=case_id)
        return plan

    def _menu(self, c: _Ctx, topic: str) -> Plan:
        messages = c.config.messages
        plan = Plan(outcome=f"menu_{topic}", user_id=c.user_id)
        purpose: ReplyPurpose
        if topic == "policy":
            purpose, text = "policy", messages.follow.policy
        elif topic == "inquiry":
            purpose, text = "menu_inquiry", messages.inquiry
        else:
            purpose = "menu_hours"
            today = c.at.astimezone(c.hours.tz).date()
            text = messages.menu.hours.format(
                hours=describe(c.config.hours, today), status=self._status_sentence(c)
            )
        self._reply(plan, c, purpose, [text], topic=f"menu_{topic}")
        return plan

    def _status_sentence(self, c: _Ctx) -> str:
        messages = c.config.messages
        status = c.hours.status(c.at)
        if status.accepting:
            return messages.menu.open_now
        if status.next_open is None:
            return messages.auto_reply.no_next_open
        return messages.menu.next_open.format(next_open=format_moment(status.next_open))

    # -- building blocks -------------------------------------------------------------------

    def _fact(
        self,
        c: _Ctx,
        kind: str,
        data: dict[str, Any],
        *,
        at: datetime | None = None,
        also: str = "",
    ) -> Any:
        """A fact of this event (its id derived from the event, and ``also`` when the event
        has several of one type)."""
        return self.facts.make(
            kind,
            data,
            cause=f"{c.event.webhook_event_id}:{also}" if also else c.event.webhook_event_id,
            at=at or c.at,
            correlation_id=c.event.correlation_id,
        )

    def _reply(
        self,
        plan: Plan,
        c: _Ctx,
        purpose: ReplyPurpose,
        texts: list[str],
        *,
        case_id: str | None = None,
        quick_reply: list[QuickReplyOption] | None = None,
        topic: str | None = None,
    ) -> None:
        """One ``SendText`` with the event's reply token, and the fact of the decision."""
        reply_token = c.event.event.get("replyToken")
        command = SendText(
            id=stable_id(c.event.webhook_event_id, purpose),
            correlation_id=c.event.correlation_id,
            to=c.user_id,
            texts=texts,
            purpose=purpose,
            reply_token=reply_token if isinstance(reply_token, str) and reply_token else None,
            reply_token_received_at=c.event.received_at if reply_token else None,
            case_id=case_id,
            quick_reply=quick_reply or [],
        )
        plan.commands.append(command)
        data: dict[str, Any] = {
            "user_id": c.user_id,
            "case_id": case_id,
            "purpose": purpose,
            "command_id": command.id,
        }
        if topic:
            data["topic"] = topic
        plan.facts.append(self._fact(c, F.AUTO_REPLY_DECIDED, data, at=c.now))

    def _ignored(self, event: LineEventReceived, reason: str) -> Plan:
        fact = self.facts.make(
            F.LINE_EVENT_IGNORED,
            {
                "event_type": event.event_type,
                "webhook_event_id": event.webhook_event_id,
                "reason": reason,
            },
            cause=event.webhook_event_id,
            at=event_time(event),
            correlation_id=event.correlation_id,
        )
        return Plan(outcome=f"ignored:{reason}", facts=[fact])


def _older(c: _Ctx, last_ms: int | None) -> bool:
    return last_ms is not None and c.event.timestamp_ms < last_ms


def _registered_on_first_message(c: _Ctx) -> dict[str, Any]:
    """A user who writes without a recorded follow (added the account before triage ran)."""
    return {
        "registered": True,
        "followed_at": c.at,
        "unfollowed_at": None,
        "school_type": None,
        "eligible": None,
        "updated_at": c.now,
    }


def _keep_read_token(document: dict[str, Any], message: dict[str, Any]) -> None:
    """Keep the message's ``markAsReadToken`` with it, for the read mark (既読) a counselor's
    reading sends later (``soudan_shared.records.newest_unread``); never logged."""
    token = message.get("markAsReadToken")
    if isinstance(token, str) and token:
        document[READ_TOKEN] = token
