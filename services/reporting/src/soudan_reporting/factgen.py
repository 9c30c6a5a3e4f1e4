"""Generated months of facts, and the figures they must give, for tests and the benchmark.

:class:`MonthGenerator` writes a plausible month of the facts in the catalogue
(:mod:`soudan_shared.fact_types`), as the other services publish them: users following and
answering the school-type question, cases with messages, claims, replies and closes, urgent
flags and emergencies, auto-replies, broadcasts, staff logins and account changes, the LINE
token, webhook summaries, restarts. It also writes facts before and after the month (earlier
registrations and staff, replies that spill into the next month, cases a millisecond either side
of the JST month boundary), which the report must count or leave out correctly.

:func:`reference_figures` computes a month's :class:`~soudan_reporting.figures.Figures` from a
list of facts in plain Python, one definition at a time, independently of the MongoDB pipelines
in :mod:`soudan_reporting.aggregate`: a test compares the two whole.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from soudan_shared import fact_types as ft
from soudan_shared.contracts import Fact

from soudan_reporting.aggregate import (
    COUNSELOR_REPLY,
    FOLLOW_UP_DAYS,
    STAFF_CHANGE_TYPES,
    TOKEN_ISSUE_TYPES,
)
from soudan_reporting.figures import (
    AuditRow,
    BroadcastRow,
    Durations,
    Figures,
    StaffChange,
    StaffRow,
    TokenState,
    bucket_bound,
    per_bucket,
    send_kind,
)
from soudan_reporting.month import Month
from soudan_reporting.recorder import TOKYO, event_document

SCHOOL_TYPES = (
    ("public_junior_high", True),
    ("public_high", True),
    ("private", True),
    ("sapporo_city", False),
    ("other", False),
)
CHECKIN_CHOICES = ("good", "neutral", "bad")  # the shipped messages.yaml's check-in keys
CATEGORIES = (
    "bullying",
    "non_attendance",
    "school_life",
    "friendships",
    "family",
    "health",
    "career",
    "other",
)
GRADES = ("jh1", "jh2", "jh3", "sh1", "sh2", "sh3", "other")  # categories.yaml's defaults
GENDERS = ("male", "female", "other")
KEYWORDS = ("死に", "消えたい", "いじめ", "虐待", "リスカ", "助け", "暴力", "しにたい")
# a flag with one keyword also carries a risk category read beside it (no extra draw: the
# generated month stays the same for a seed)
KEYWORD_RISK = {"死に": "自殺念慮", "消えたい": "自殺念慮", "リスカ": "自傷", "虐待": "暴力・虐待"}
EMERGENCY_TYPES = ("suicide_notice", "child_abuse", "crime_victim", "other")
AGENCIES = (
    "児童相談所（相談者の住所を管轄する所）",
    "北海道警察本部 少年相談窓口",
    "生徒指導・学校安全課（平日日中）",
    "相談者の在籍校",
)
CONTACT_RESULTS = ("referred", "consulted", "no_answer", "callback")
LATENCY_BOUNDS = (5, 10, 25, 50, 100, 250, 500, 1000)
SERVICES = ("ingress", "triage", "dispatch", "console", "reporting")
STAFF = (
    # id, display name, role, days since the last password change at month end, second factor
    ("s01", "管理 一郎", "admin", 12, True),
    ("s02", "監督 花子", "supervisor", 45, True),
    ("s03", "相談 太郎", "counselor", 120, True),
    ("s04", "相談 次郎", "counselor", 30, False),  # stopped for a day
    ("s05", "相談 三郎", "counselor", 95, True),
    ("s06", "監督 桜", "supervisor", 60, False),  # enabled, then disabled
    ("s07", None, "counselor", 5, False),  # created without a name
    ("s08", "相談 四郎", "counselor", 20, True),  # disabled during the month
)
OPEN_HOUR, CLOSE_HOUR = 17, 22  # consultation hours of the generated month (JST)


@dataclass
class Plan:
    """What the generator decided, for tests that check known counts without the reference."""

    cases_in_month: int = 0
    new_follows: int = 0
    unblocks: int = 0
    unfollows: int = 0
    boundary_cases_in_month: int = 0
    counts: Counter[str] = field(default_factory=Counter)  # facts by type, whole run


class MonthGenerator:
    """Facts for ``month``: about ``cases`` consultations and everything around them.

    Deterministic for a given ``seed``. ``webhook_every_minutes`` sets how often a webhook
    summary is written (1 is what ingress does; tests use fewer). ``rotation`` says how the LINE
    channel token was last handled: ``"rotated"``, ``"issued"`` (dispatch's own fact type),
    ``"revoked"``, or ``None`` (no token fact: a static token).

    A close records one or more categories, the student's grade and gender (or none: 不明) and
    whether the case was handed over; closes before ``old_closes_before`` have the shape they had
    before those were recorded (one ``category``, nothing else). The new fields are chosen from
    the case id, not the generator's random numbers, so both shapes give the same month
    otherwise (and a month of old closes is exactly what the generator wrote before).
    """

    def __init__(
        self,
        month: Month,
        *,
        cases: int = 200,
        seed: int = 1,
        webhook_every_minutes: int = 60,
        rotation: str | None = "rotated",
        boundaries: bool = True,
        old_closes_before: datetime | None = None,
    ) -> None:
        self.month = month
        self.cases = cases
        self.rng = random.Random(seed)  # noqa: S311 (test data, not secrets)
        self.seed = seed
        self.webhook_every = webhook_every_minutes
        self.rotation = rotation
        self.boundaries = boundaries
        self.old_closes_before = old_closes_before
        self.plan = Plan()
        self._n = 0

    # -- helpers ------------------------------------------------------------------------------

    def _fact(self, type_: str, at: datetime, data: dict[str, Any], service: str) -> Fact:
        self._n += 1
        self.plan.counts[type_] += 1
        # Ids sort like the generation order, so ties in time break the same way everywhere.
        return Fact(
            id=f"g{self.seed:04d}{self._n:09d}", type=type_, at=at, service=service, data=data
        )

    def _instant(self, day_index: int, seconds: float) -> datetime:
        """``seconds`` after 00:00 JST of day ``day_index`` of the month, to the millisecond."""
        day = self.month.days()[0] + timedelta(days=day_index)
        midnight = datetime(day.year, day.month, day.day, tzinfo=TOKYO)
        return _ms(midnight + timedelta(seconds=seconds))

    def _random_instant(self) -> datetime:
        days = len(self.month.days())
        return self._instant(self.rng.randrange(days), self.rng.uniform(0, 86_400 - 0.001))

    def _later(self, at: datetime, low: float, high: float) -> datetime:
        return _ms(at + timedelta(seconds=self.rng.uniform(low, high)))

    # -- the month ----------------------------------------------------------------------------

    def facts(self) -> Iterator[Fact]:
        yield from self._staff()
        users = list(self._users())
        yield from users_facts(users)
        yield from self._cases([u for u in users if u.registered_for_cases])
        yield from self._broadcasts()
        yield from self._security()
        yield from self._system()

    # staff accounts, logins and their changes
    def _staff(self) -> Iterator[Fact]:
        rng, month = self.rng, self.month
        end = month.end
        for staff_id, name, role, age_days, second_factor in STAFF:
            created = end - timedelta(days=age_days + rng.randint(30, 300), hours=3)
            yield self._fact(
                ft.STAFF_CREATED,
                _ms(created),
                {"staff_id": staff_id, "role": role, "by": "s01", "name": name},
                "console",
            )
            changed = _ms(end - timedelta(days=age_days, hours=rng.randint(1, 20)))
            yield self._fact(
                ft.PASSWORD_CHANGED, changed, {"staff_id": staff_id, "by": staff_id}, "console"
            )
            if second_factor or staff_id == "s06":
                yield self._fact(
                    ft.SECOND_FACTOR_ENABLED,
                    _ms(created + timedelta(hours=1)),
                    {"staff_id": staff_id},
                    "console",
                )
        yield self._fact(
            ft.SECOND_FACTOR_DISABLED,
            self._instant(3, 50_000),
            {"staff_id": "s06", "by": "s01"},
            "console",
        )
        yield self._fact(
            ft.STAFF_CREATED,
            self._instant(9, 40_000),
            {"staff_id": "s09", "role": "counselor", "by": "s01"},
            "console",
        )
        yield self._fact(
            ft.STAFF_ROLE_CHANGED,
            self._instant(14, 41_000),
            {"staff_id": "s05", "before": "counselor", "after": "supervisor", "by": "s01"},
            "console",
        )
        yield self._fact(
            ft.STAFF_DISABLED,
            self._instant(19, 42_000),
            {"staff_id": "s08", "by": "s01"},
            "console",
        )
        # s04 is stopped for a day and let back in
        for day, change in ((5, ft.STAFF_DISABLED), (6, ft.STAFF_ENABLED)):
            yield self._fact(
                change, self._instant(day, 43_000), {"staff_id": "s04", "by": "s01"}, "console"
            )
        second = {s[0]: s[4] for s in STAFF}
        for day in range(len(month.days())):
            for staff_id in rng.sample([s[0] for s in STAFF], 3):
                yield self._fact(
                    ft.LOGIN_SUCCEEDED,
                    self._instant(day, rng.uniform(60_000, 62_000)),
                    {"staff_id": staff_id, "role": "counselor", "second_factor": second[staff_id]},
                    "console",
                )
        for i in range(12):
            reason = "bad_password" if i % 3 else "unknown_account"
            yield self._fact(
                ft.LOGIN_FAILED,
                self._random_instant(),
                {
                    "staff_id": None if reason == "unknown_account" else "s07",
                    "reason": reason,
                    "source": "198.51.100.7",
                },
                "console",
            )
        yield self._fact(
            ft.LOCKED_OUT,
            self._instant(11, 63_000),
            {"staff_id": "s07", "source": "198.51.100.7"},
            "console",
        )
        for what in ("hours", "messages", "keywords"):
            yield self._fact(
                ft.SETTINGS_CHANGED,
                self._random_instant(),
                {"what": what, "before": {}, "after": {}, "staff_id": "s01"},
                "console",
            )
        if self.rotation in ("rotated", "revoked"):
            issued = _ms(end - timedelta(days=40, hours=5))
            yield self._fact(
                ft.LINE_TOKEN_ROTATED,
                issued + timedelta(seconds=2),
                {"issued_at": issued.isoformat(), "key_id": "kid-1"},
                "dispatch",
            )
        if self.rotation == "issued":  # dispatch's v2.1 tokens: issue, then renew and revoke
            for key_id, days_ago in (("kid-a", 35), ("kid-b", 6)):
                issued = _ms(end - timedelta(days=days_ago, hours=2))
                yield self._fact(
                    ft.TOKEN_ISSUED,
                    issued,
                    {
                        "key_id": key_id,
                        "issued_at": issued.isoformat(),
                        "expires_at": (issued + timedelta(days=30)).isoformat(),
                    },
                    "dispatch",
                )
            yield self._fact(
                ft.TOKEN_REVOKED,
                _ms(end - timedelta(days=6, hours=1)),
                {"key_id": "kid-a", "reason": "renewed"},
                "dispatch",
            )
        if self.rotation == "revoked":
            yield self._fact(
                ft.TOKEN_REVOKED,
                _ms(end - timedelta(days=10)),
                {"key_id": "kid-1", "reason": "leaked"},
                "dispatch",
            )

    def _users(self) -> Iterator[_User]:
        rng, month = self.rng, self.month
        prior = max(20, self.cases // 2)
        for i in range(prior):
            followed = _ms(month.start - timedelta(days=rng.uniform(1, 180)))
            user = _User(f"U{self.seed:02d}p{i:06d}", followed)
            if rng.random() < 0.7:
                user.school = rng.choice(SCHOOL_TYPES)
                user.school_at = self._later(followed, 5, 600)
            if rng.random() < 0.1:
                user.unfollowed_at = self._later(followed, 3_600, 86_400)
                if user.unfollowed_at < month.start and rng.random() < 0.5:
                    user.refollowed_at = self._random_instant()
                    self.plan.unblocks += 1
            elif rng.random() < 0.05:
                user.unfollowed_at = self._random_instant()
            if user.unfollowed_at is not None and user.unfollowed_at >= month.start:
                self.plan.unfollows += 1
            yield user
        for i in range(max(10, self.cases // 3)):
            user = _User(f"U{self.seed:02d}n{i:06d}", self._random_instant(), new=True)
            self.plan.new_follows += 1
            if rng.random() < 0.8:
                user.school = rng.choice(SCHOOL_TYPES)
                user.school_at = self._later(user.followed_at, 5, 900)
            yield user

    def _cases(self, users: list[_User]) -> Iterator[Fact]:
        rng = self.rng
        openings = [(self._random_instant(), rng.choice(users)) for _ in range(self.cases)]
        self.plan.cases_in_month = self.cases
        if self.boundaries:
            start, end = self.month.start, self.month.end
            edges = [start, end - timedelta(milliseconds=1)]
            outside = [start - timedelta(milliseconds=1), end]
            openings += [(at, rng.choice(users)) for at in edges + outside]
            self.plan.cases_in_month += len(edges)
            self.plan.boundary_cases_in_month = len(edges)
        for n, (opened_at, user) in enumerate(openings):
            yield from self._case(f"c{self.seed:02d}{n:07d}", opened_at, user)

    def _case(self, case_id: str, opened_at: datetime, user: _User) -> Iterator[Fact]:
        rng = self.rng
        in_hours = _in_hours(opened_at)
        school, eligible = user.school_at_time(opened_at)
        urgent = rng.random() < 0.08
        base = {"case_id": case_id, "user_id": user.user_id}
        yield self._fact(
            ft.CASE_OPENED,
            opened_at,
            {
                **base,
                "in_hours": in_hours,
                "out_of_scope": eligible is False,
                "school_type": school,
                "urgent": urgent,
            },
            "triage",
        )
        at = opened_at
        for j in range(rng.randint(1, 8)):
            at = self._later(at, 0, 240) if j else opened_at
            yield self._fact(
                ft.MESSAGE_RECEIVED,
                at,
                {**base, "message_id": f"{case_id}m{j}", "chars": rng.randint(1, 300)},
                "triage",
            )
        flagged_at: datetime | None = None
        if urgent or rng.random() < 0.05:
            flagged_at = opened_at if urgent else self._later(opened_at, 30, 1_800)
            keywords = rng.sample(KEYWORDS, rng.randint(1, 2))
            risk = KEYWORD_RISK.get(keywords[0]) if len(keywords) == 1 else None
            risks = [risk] if risk else []
            yield self._fact(
                ft.CASE_FLAGGED_URGENT,
                flagged_at,
                {**base, "keywords": keywords, "risks": risks, "in_hours": in_hours},
                "triage",
            )
            if rng.random() < 0.3:  # a second urgent message repeats a keyword, maybe later
                again = self._later(flagged_at, 10, 7_200)
                yield self._fact(
                    ft.CASE_FLAGGED_URGENT,
                    again,
                    {
                        **base,
                        "keywords": keywords[:1],
                        "risks": risks,
                        "in_hours": _in_hours(again),
                    },
                    "triage",
                )
        if rng.random() < 0.04:
            kind = rng.choice(("image", "sticker", "video"))
            yield self._fact(
                ft.MEDIA_REFUSED,
                self._later(opened_at, 1, 60),
                {"user_id": user.user_id, "kind": kind, "replied": True},
                "triage",
            )
            yield self._reply("media_refused", self._later(opened_at, 61, 62), base)
        answered = True
        if not in_hours:
            purpose = "urgent_out_of_hours" if urgent else "out_of_hours"
            yield from self._auto(purpose, self._later(opened_at, 0.1, 2), base)
            if rng.random() < 0.3:  # answered at the next session
                start = opened_at + timedelta(days=1)
                start = start.astimezone(TOKYO).replace(hour=OPEN_HOUR, minute=0)
                claimed_at = self._later(start, 0, 1_200)
            else:
                answered = False
                claimed_at = opened_at
        else:
            if rng.random() < 0.08:
                yield from self._auto("congestion", self._later(opened_at, 0.1, 2), base)
            answered = rng.random() < 0.93
            claimed_at = self._later(opened_at, 5, 2_400)
        if not answered:
            return
        staff_id = rng.choice(("s02", "s03", "s04", "s05", "s07"))
        yield self._fact(
            ft.CASE_CLAIMED,
            claimed_at,
            {
                "case_id": case_id,
                "staff_id": staff_id,
                "waited_seconds": (claimed_at - opened_at).total_seconds(),
            },
            "console",
        )
        for _ in range(rng.randint(1, 3)):
            viewer = staff_id if rng.random() < 0.8 else "s02"
            yield self._fact(
                ft.CASE_VIEWED,
                self._later(claimed_at, 1, 600),
                {"case_id": case_id, "staff_id": viewer},
                "console",
            )
        at = claimed_at
        for j in range(rng.randint(1, 5)):
            at = self._later(at, 20, 400 if j == 0 else 900)
            messages = rng.randint(1, 3)
            command_id = f"{case_id}r{j}"
            yield self._fact(
                ft.REPLY_REQUESTED,
                at,
                {
                    "case_id": case_id,
                    "staff_id": staff_id,
                    "command_id": command_id,
                    "messages": messages,
                },
                "console",
            )
            sent_at = _ms(at + timedelta(milliseconds=rng.randint(50, 900)))
            method = "push" if rng.random() < 0.3 else "reply"
            latency = rng.randint(50, 900)
            # now and then a push after a crash that may have followed a delivered reply
            maybe_twice = method == "push" and latency % 10 == 0
            yield self._fact(
                ft.REPLY_SENT,
                sent_at,
                {
                    **base,
                    "purpose": COUNSELOR_REPLY,
                    "method": method,
                    "staff_id": staff_id,
                    "latency_ms": latency,
                    "request_id": f"req-{command_id}",
                    "messages": messages,
                    "command_id": command_id,
                    "note": ft.NOTE_MAYBE_TWICE if maybe_twice else None,
                },
                "dispatch",
            )
        emergency = flagged_at is not None and rng.random() < 0.5
        if emergency:
            assert flagged_at is not None
            yield from self._emergency(case_id, flagged_at, staff_id)
        if rng.random() < 0.9:
            closed_at = self._later(at, 60, 1_800)
            category = rng.choice(CATEGORIES)
            data = {
                "case_id": case_id,
                "staff_id": staff_id,
                "category": category,
                "outcome": rng.choice(("resolved", "continuing", "referred")),
                "opened_at": opened_at.isoformat(),
                "duration_seconds": (closed_at - opened_at).total_seconds(),
                "urgent": flagged_at is not None,
                # the case's state at the close: an answer since the opening changed it
                "out_of_scope": user.school_at_time(closed_at)[1] is False,
            }
            if self.old_closes_before is None or closed_at >= self.old_closes_before:
                data.update(close_attributes(case_id, category))
            yield self._fact(ft.CASE_CLOSED, closed_at, data, "console")
            yield from self._checkin(case_id, closed_at, base, emergency=emergency)

    def _checkin(
        self, case_id: str, closed_at: datetime, base: dict[str, Any], *, emergency: bool
    ) -> Iterator[Fact]:
        """The check-in after the close: skipped after an emergency, else sent and answered
        (or not). Chosen from the case id, not the generator's random numbers, so the rest of
        the generated month stays what it was."""
        if emergency:
            data = {**base, "reason": "emergency"}
            yield self._fact(ft.CHECKIN_SKIPPED, closed_at, data, "console")
            return
        digest = zlib.crc32(case_id.encode())
        sent_at = _ms(closed_at + timedelta(seconds=1 + digest % 30))
        yield self._fact(ft.CHECKIN_SENT, sent_at, {**base, "command_id": case_id}, "triage")
        choice = (*CHECKIN_CHOICES, None)[digest % 4]
        if choice is not None:
            answered_at = sent_at + timedelta(minutes=digest % 600)
            yield self._fact(ft.CHECKIN_ANSWERED, answered_at, {**base, "choice": choice}, "triage")

    def _reply(self, purpose: str, at: datetime, base: dict[str, Any]) -> Fact:
        return self._fact(
            ft.REPLY_SENT,
            at,
            {
                **base,
                "purpose": purpose,
                "method": "reply",
                "staff_id": None,
                "latency_ms": self.rng.randint(40, 400),
                "request_id": f"req-{self._n}",
                "messages": 1,
                "command_id": f"cmd-{self._n}",
            },
            "dispatch",
        )

    def _auto(self, purpose: str, at: datetime, base: dict[str, Any]) -> Iterator[Fact]:
        yield self._fact(ft.AUTO_REPLY_DECIDED, at, {**base, "purpose": purpose}, "triage")
        yield self._reply(purpose, self._later(at, 0.05, 0.5), base)

    def _emergency(self, case_id: str, flagged_at: datetime, staff_id: str) -> Iterator[Fact]:
        rng = self.rng
        emergency_id = f"e-{case_id}"
        raised = self._later(flagged_at, 300, 900)
        base = {"emergency_id": emergency_id, "case_id": case_id}
        kind = rng.choice(EMERGENCY_TYPES)
        yield self._fact(
            ft.EMERGENCY_RAISED, raised, {**base, "type": kind, "staff_id": staff_id}, "console"
        )
        for channel in ("live", "email"):
            yield self._fact(
                ft.EMERGENCY_NOTIFIED,
                self._later(raised, 0.1, 5),
                {"emergency_id": emergency_id, "channel": channel, "recipients": 3},
                "console",
            )
        at = raised
        for agency in rng.sample(AGENCIES, rng.randint(1, 3)):
            at = self._later(at, 60, 900)
            yield self._fact(
                ft.EMERGENCY_CONTACT,
                at,
                {
                    **base,
                    "agency": agency,
                    "result": rng.choice(CONTACT_RESULTS),
                    "staff_id": staff_id,
                    "contacted_at": at.isoformat(),
                },
                "console",
            )
        yield self._fact(
            ft.EMERGENCY_CLOSED,
            self._later(at, 600, 3_600),
            {**base, "staff_id": staff_id},
            "console",
        )

    def _broadcasts(self) -> Iterator[Fact]:
        month = self.month
        plans = [
            ("b-carry", month.start - timedelta(minutes=20), 1_234, 4),  # started last month
            ("b-open", self._instant(4, 61_000), 980, 0),
            ("b-hours", self._instant(20, 36_000), 1_501, 7),
        ]
        for broadcast_id, started, planned, failures in plans:
            started = _ms(started)
            yield self._fact(
                ft.BROADCAST_STARTED,
                started,
                {
                    "broadcast_id": broadcast_id,
                    "audience": "registered",
                    "method": "multicast",
                    "planned": planned,
                },
                "dispatch",
            )
            at = started
            sent = 0
            for chunk, offset in enumerate(range(0, planned, 500)):
                at = at + timedelta(minutes=10)
                recipients = min(500, planned - offset)
                sent += recipients
                yield self._fact(
                    ft.BROADCAST_CHUNK_SENT,
                    at,
                    {"broadcast_id": broadcast_id, "chunk": chunk, "recipients": recipients},
                    "dispatch",
                )
            yield self._fact(
                ft.BROADCAST_FINISHED,
                at + timedelta(seconds=5),
                {
                    "broadcast_id": broadcast_id,
                    "recipients": sent - failures,
                    "failures": failures,
                },
                "dispatch",
            )
        # dispatch's readings of the month's quota (one still in the month before)
        used = 0
        for day, moment in ((-1, 80_000), (3, 1_000), (12, 50_000), (25, 70_000)):
            used = used + self.rng.randint(100, 900) if day >= 0 else 4_321
            at = month.start - timedelta(hours=1) if day < 0 else self._instant(day, moment)
            yield self._fact(
                ft.LINE_QUOTA_READ,
                at,
                {"limit": 5_000, "used": used, "remaining": 5_000 - used, "reserve": 500},
                "dispatch",
            )
        yield self._fact(
            ft.BROADCAST_REFUSED,
            self._instant(21, 36_000),
            {"broadcast_id": "b-again", "reason": "already_sent"},
            "dispatch",
        )

    def _security(self) -> Iterator[Fact]:
        for i in range(9):
            yield self._fact(
                ft.SIGNATURE_REJECTED,
                self._random_instant(),
                {"source": "203.0.113.9", "reason": "mismatch" if i < 2 else "missing"},
                "ingress",
            )
        for day in range(len(self.month.days())):
            yield self._fact(
                ft.RETENTION_RUN,
                self._instant(day, 4 * 3_600),
                {"erased_messages": self.rng.randint(0, 40), "older_than": "2026-01-01"},
                "triage",
            )

    def _system(self) -> Iterator[Fact]:
        rng, month = self.rng, self.month
        for service in SERVICES:
            yield self._fact(ft.SERVICE_STARTED, month.start + timedelta(minutes=1), {}, service)
        restart = self._instant(12, 14_400)
        yield self._fact(ft.SERVICE_STOPPED, restart, {"host": "h", "pid": 1}, "triage")
        yield self._fact(
            ft.SERVICE_STARTED, restart + timedelta(seconds=9), {"host": "h", "pid": 2}, "triage"
        )
        minutes = len(month.days()) * 1_440
        for i, minute in enumerate(range(0, minutes, self.webhook_every)):
            window = month.start + timedelta(minutes=minute)
            requests = rng.randint(0, 40)
            rejected = min(requests, rng.randint(0, 1))
            counts = [0] * (len(LATENCY_BOUNDS) + 1)
            for _ in range(requests):
                counts[min(int(rng.expovariate(1 / 2.2)), len(counts) - 1)] += 1
            keys = [f"<={b}" for b in LATENCY_BOUNDS] + ["+Inf"]
            if i % 2:  # every other summary written the Prometheus way, cumulative
                running = 0
                for k, n in enumerate(counts):
                    running += n
                    counts[k] = running
            yield self._fact(
                ft.WEBHOOK_REQUESTS,
                window + timedelta(seconds=60),
                {
                    "window_start": window.isoformat(),
                    "window_seconds": 60,
                    "requests": requests,
                    "events": requests,
                    "by_status": {"200": requests - rejected, "401": rejected},
                    "latency_ms_buckets": dict(zip(keys, counts, strict=True)),
                },
                "ingress",
            )
        for i in range(3):
            yield self._fact(
                ft.BUS_DEAD_LETTERED,
                self._random_instant(),
                {
                    "queue": "soudan.send_text" if i else "soudan.facts",
                    "reason": "delivery limit",
                    "message_type": "command.send_text",
                },
                "dispatch",
            )
        for status in (429, 500, 500, 503):
            yield self._fact(
                ft.LINE_API_ERROR,
                self._random_instant(),
                {"endpoint": "/v2/bot/message/push", "status": status, "request_id": None},
                "dispatch",
            )


@dataclass
class _User:
    user_id: str
    followed_at: datetime
    new: bool = False
    school: tuple[str, bool] | None = None
    school_at: datetime | None = None
    unfollowed_at: datetime | None = None
    refollowed_at: datetime | None = None

    @property
    def registered_for_cases(self) -> bool:
        return self.unfollowed_at is None or self.refollowed_at is not None

    def school_at_time(self, at: datetime) -> tuple[str | None, bool | None]:
        if self.school is None or self.school_at is None or self.school_at > at:
            return None, None
        return self.school


def close_attributes(case_id: str, category: str) -> dict[str, Any]:
    """What a close records since 2026-12 beside its first ``category``: most cases one
    category, some two or three; a grade and a gender, each sometimes left unrecorded (None);
    about one case in six handed over to another service. From the case id alone."""
    digest = zlib.crc32(f"{case_id}/close".encode())
    digest, extra = divmod(digest, 10)
    digest, grade = divmod(digest, len(GRADES) + 1)
    digest, gender = divmod(digest, len(GENDERS) + 1)
    digest, handed_over = divmod(digest, 6)
    others = [c for c in CATEGORIES if c != category]
    start = digest % len(others)
    count = 0 if extra < 6 else 1 if extra < 9 else 2
    return {
        "categories": [category, *(others[(start + i) % len(others)] for i in range(count))],
        "grade": (*GRADES, None)[grade],
        "gender": (*GENDERS, None)[gender],
        "handed_over": handed_over == 0,
    }


def users_facts(users: list[_User]) -> Iterator[Fact]:
    """Follow, school-type and unfollow facts (and the greeting replies) of ``users``."""
    for user in users:
        base = {"user_id": user.user_id}
        yield Fact(
            id=f"u{user.user_id}f",
            type=ft.LINE_FOLLOWED,
            at=user.followed_at,
            service="triage",
            data={**base, "unblocked": False},
        )
        for k, purpose in enumerate(("greeting", "policy", "school_type_question")):
            yield Fact(
                id=f"u{user.user_id}g{k}",
                type=ft.REPLY_SENT,
                at=_ms(user.followed_at + timedelta(milliseconds=300 + k)),
                service="dispatch",
                data={**base, "purpose": purpose, "method": "reply", "case_id": None},
            )
        if user.school is not None and user.school_at is not None:
            yield Fact(
                id=f"u{user.user_id}s",
                type=ft.SCHOOL_TYPE_SET,
                at=user.school_at,
                service="triage",
                data={**base, "school_type": user.school[0], "eligible": user.school[1]},
            )
        if user.unfollowed_at is not None:
            yield Fact(
                id=f"u{user.user_id}x",
                type=ft.LINE_UNFOLLOWED,
                at=user.unfollowed_at,
                service="triage",
                data=base,
            )
        if user.refollowed_at is not None:
            yield Fact(
                id=f"u{user.user_id}r",
                type=ft.LINE_FOLLOWED,
                at=user.refollowed_at,
                service="triage",
                data={**base, "unblocked": True},
            )


async def store_facts(events: Any, facts: Iterable[Fact], *, batch: int = 5_000) -> int:
    """Record ``facts`` into ``events`` as the recorder does, in batches; return how many."""
    pending: list[dict[str, Any]] = []
    n = 0
    for fact in facts:
        pending.append(event_document(fact))
        if len(pending) >= batch:
            await events.insert_many(pending, ordered=False)
            n += len(pending)
            pending = []
    if pending:
        await events.insert_many(pending, ordered=False)
        n += len(pending)
    return n


def _in_hours(at: datetime) -> bool:
    return OPEN_HOUR <= at.astimezone(TOKYO).hour < CLOSE_HOUR


def _ms(at: datetime) -> datetime:
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


# -- the reference: the same figures, in plain Python ------------------------------------------


def reference_figures(facts: Iterable[Fact], month: Month) -> Figures:
    """The month's figures by definition, one fact at a time (slow, simple, independent)."""
    start, end = month.start, month.end
    horizon = end + timedelta(days=FOLLOW_UP_DAYS)
    ordered = sorted(facts, key=lambda f: (f.at, f.id))

    def in_month(f: Fact) -> bool:
        return start <= f.at < end

    def local(f: Fact) -> datetime:
        return f.at.astimezone(TOKYO)

    monthly = [f for f in ordered if in_month(f)]
    by_type: dict[str, list[Fact]] = defaultdict(list)
    for f in monthly:
        by_type[f.type].append(f)

    def count(type_: str, key: str | None = None) -> dict[str, int]:
        out: Counter[str] = Counter()
        for f in by_type[type_]:
            out[_k(f.data.get(key)) if key else ""] += 1
        return dict(out)

    # 登録状況
    follow_state: dict[Any, str] = {}
    school_state: dict[Any, tuple[Any, Any]] = {}
    for f in ordered:
        if f.at >= end:
            continue
        user = f.data.get("user_id")
        if f.type in (ft.LINE_FOLLOWED, ft.LINE_UNFOLLOWED):
            follow_state[user] = f.type
        elif f.type == ft.SCHOOL_TYPE_SET:
            school_state[user] = (f.data.get("school_type"), f.data.get("eligible"))
    registered = [
        u for u, state in follow_state.items() if state == ft.LINE_FOLLOWED and u is not None
    ]
    by_school: Counter[str] = Counter()
    eligible: Counter[str] = Counter()
    for user in registered:
        school, ok = school_state.get(user, (None, None))
        by_school[_k(school)] += 1
        eligible[{True: "yes", False: "no"}.get(ok, "unknown")] += 1
    follows = count(ft.LINE_FOLLOWED, "unblocked")

    # 相談件数
    opened = by_type[ft.CASE_OPENED]
    # a case's school type as the console shows it: triage updates a user's open case with
    # every answer until the case is closed (generated users may have several open at once)
    case_school: dict[Any, tuple[Any, bool]] = {}
    open_cases: dict[Any, set[Any]] = defaultdict(set)
    case_ids = {f.data.get("case_id") for f in opened}
    for f in ordered:
        if f.at >= horizon:
            break
        case_id = f.data.get("case_id")
        user = f.data.get("user_id")
        if f.type == ft.CASE_OPENED and case_id in case_ids and in_month(f):
            case_school[case_id] = (f.data.get("school_type"), f.data.get("out_of_scope") is True)
            open_cases[user].add(case_id)
        elif f.type == ft.SCHOOL_TYPE_SET:
            for current in open_cases.get(user, ()):
                case_school[current] = (f.data.get("school_type"), f.data.get("eligible") is False)
        elif f.type == ft.CASE_CLOSED:
            for cases in open_cases.values():
                cases.discard(case_id)
    replies: Counter[str] = Counter()
    methods: Counter[str] = Counter()
    pushes: Counter[str] = Counter()
    free: Counter[str] = Counter()
    out_counselor = out_auto = 0
    for f in by_type[ft.REPLY_SENT]:
        purpose = _k(f.data.get("purpose"))
        replies[purpose] += 1
        methods[_k(f.data.get("method"))] += 1
        (free if f.data.get("method") == "reply" else pushes)[send_kind(purpose)] += 1
        messages = f.data.get("messages")
        messages = 1 if messages is None else messages
        if purpose == COUNSELOR_REPLY:
            out_counselor += messages
        else:
            out_auto += messages

    readings = by_type[ft.LINE_QUOTA_READ]
    quota = max(readings, key=lambda f: f.at) if readings else None

    cases: dict[Any, dict[str, Any]] = defaultdict(dict)
    for f in ordered:
        case_id = f.data.get("case_id")
        case = cases[case_id]
        follow_up = start <= f.at < horizon
        if f.type == ft.CASE_OPENED and in_month(f):
            case.setdefault("opened", f.at)
            case["in_hours"] = f.data.get("in_hours")
            if f.data.get("urgent") is True:
                case["urgent"] = True
        elif not follow_up:
            continue
        elif f.type == ft.REPLY_SENT and f.data.get("purpose") == COUNSELOR_REPLY:
            case.setdefault("reply", f.at)
            case.setdefault("replies", []).append(f.at)
        elif f.type == ft.CASE_CLAIMED:
            case.setdefault("claim", f.at)
        elif f.type == ft.CASE_CLOSED:
            case.setdefault("closed", f.at)
        elif f.type == ft.CASE_FLAGGED_URGENT:
            case["urgent"] = True
            if in_month(f):
                case.setdefault("flagged", f.at)
    cases.pop(None, None)

    def ms(a: datetime, b: datetime) -> int:
        return (a - b) // timedelta(milliseconds=1)

    month_cases = [c for c in cases.values() if "opened" in c]
    in_hours_cases = [c for c in month_cases if c.get("in_hours") is True]
    flag_to_reply = []
    for c in cases.values():
        if "flagged" in c:
            later = [r for r in c.get("replies", []) if r >= c["flagged"]]
            if later:
                flag_to_reply.append(ms(min(later), c["flagged"]))

    # 緊急性の高い相談
    first_flag: dict[Any, Fact] = {}
    keyword_cases: set[tuple[str, Any]] = set()
    risk_cases: set[tuple[str, Any]] = set()
    for f in by_type[ft.CASE_FLAGGED_URGENT]:
        first_flag.setdefault(f.data.get("case_id"), f)
        for keyword in f.data.get("keywords") or ():
            keyword_cases.add((keyword, f.data.get("case_id")))
        for category in f.data.get("risks") or ():
            risk_cases.add((category, f.data.get("case_id")))

    # 自動応答・一斉送信
    broadcasts: dict[str, dict[str, Any]] = {}
    for f in monthly:
        if f.type in (ft.BROADCAST_STARTED, ft.BROADCAST_FINISHED):
            row = broadcasts.setdefault(
                _k(f.data.get("broadcast_id")),
                {"day": None, "audience": None, "recipients": 0, "failures": 0, "finished": False},
            )
            if f.type == ft.BROADCAST_STARTED:
                row["day"] = local(f).strftime("%Y-%m-%d")
                row["audience"] = f.data.get("audience")
            else:
                row["recipients"] += f.data.get("recipients") or 0
                row["failures"] += f.data.get("failures") or 0
                row["finished"] = True

    # 情報セキュリティ
    staff: dict[str, dict[str, Any]] = {}
    token_issued: Fact | None = None
    token_revoked: Fact | None = None
    revoked_keys: set[Any] = set()
    for f in ordered:
        if f.at >= end:
            continue
        if f.type in TOKEN_ISSUE_TYPES:
            token_issued = f
        elif f.type == ft.TOKEN_REVOKED:
            token_revoked = f
            revoked_keys.add(f.data.get("key_id"))
        staff_id = f.data.get("staff_id")
        if staff_id is None:
            continue
        if f.type == ft.STAFF_CREATED:
            s = staff.setdefault(staff_id, {})
            s.setdefault("created", f.at)
            s.setdefault("name", f.data.get("name"))
            s["password"] = max(s.get("password", f.at), f.at)
            s["role"] = f.data.get("role") if f.data.get("role") is not None else s.get("role")
        elif f.type == ft.PASSWORD_CHANGED:
            s = staff.setdefault(staff_id, {})
            s["password"] = max(s.get("password", f.at), f.at)
        elif f.type == ft.STAFF_ROLE_CHANGED:
            if f.data.get("after") is not None:
                staff.setdefault(staff_id, {})["role"] = f.data["after"]
        elif f.type == ft.STAFF_DISABLED:
            staff.setdefault(staff_id, {})["disabled"] = True
        elif f.type == ft.STAFF_ENABLED:
            staff.setdefault(staff_id, {})["disabled"] = False
        elif f.type == ft.SECOND_FACTOR_ENABLED:
            staff.setdefault(staff_id, {})["on"] = f.at
        elif f.type == ft.SECOND_FACTOR_DISABLED:
            staff.setdefault(staff_id, {})["off"] = f.at
    staff_rows = []
    for staff_id in sorted(staff):
        s = staff[staff_id]
        if "created" not in s or s.get("disabled"):
            continue
        on, off = s.get("on"), s.get("off")
        staff_rows.append(
            StaffRow(
                staff_id=staff_id,
                name=s.get("name"),
                role=s.get("role"),
                password_age_days=(end - s["password"]) // timedelta(days=1),
                second_factor=on is not None and (off is None or on > off),
            )
        )
    changes = []
    for f in monthly:
        what = STAFF_CHANGE_TYPES.get(f.type)
        if what:
            after = f.data.get("after")
            changes.append(
                StaffChange(
                    day=local(f).strftime("%Y-%m-%d"),
                    staff_id=_k(f.data.get("staff_id")),
                    what=what,
                    before=f.data.get("before"),
                    after=after if after is not None else f.data.get("role"),
                    by=f.data.get("by"),
                )
            )
    views: Counter[str] = Counter()
    viewed: dict[str, set[Any]] = defaultdict(set)
    actions: Counter[tuple[str, str]] = Counter()
    for f in monthly:
        who = _k(f.data.get("staff_id"))
        if f.type == ft.CASE_VIEWED:
            views[who] += 1
            viewed[who].add(f.data.get("case_id"))
        elif f.type in (ft.REPLY_REQUESTED, ft.CASE_CLOSED):
            actions[(who, f.type)] += 1
    audit_staff = sorted(set(views) | {who for who, _ in actions})
    token = TokenState(revoked=token_revoked is not None)
    if token_issued is not None:
        data = token_issued.data
        issued_at = token_issued.at
        if isinstance(data.get("issued_at"), str):
            issued_at = datetime.fromisoformat(data["issued_at"])
        expires = data.get("expires_at")
        key_id = data.get("key_id")
        if key_id is not None:
            revoked = key_id in revoked_keys
        else:
            revoked = token_revoked is not None and token_revoked.at > token_issued.at
        token = TokenState(
            source=token_issued.type,
            issued_at=issued_at,
            age_days=(end - issued_at) // timedelta(days=1),
            expires_at=datetime.fromisoformat(expires) if isinstance(expires, str) else None,
            key_id=key_id,
            revoked=revoked,
        )

    # システム稼働
    starts: Counter[str] = Counter()
    stops: Counter[str] = Counter()
    for f in by_type[ft.SERVICE_STARTED]:
        starts[f.service] += 1
    for f in by_type[ft.SERVICE_STOPPED]:
        stops[f.service] += 1
    by_status: Counter[str] = Counter()
    latency: Counter[str] = Counter()
    for f in by_type[ft.WEBHOOK_REQUESTS]:
        by_status.update(f.data.get("by_status") or {})
        buckets = f.data.get("latency_ms_buckets") or {}
        if sum(buckets.values()) > f.data.get("requests", 0):
            buckets = per_bucket(buckets)
        latency.update({k: n for k, n in buckets.items() if bucket_bound(k) is not None})
    api_errors: Counter[str] = Counter()
    for f in by_type[ft.LINE_API_ERROR]:
        api_errors[f"{_k(f.data.get('endpoint'))} {_k(f.data.get('status'))}".strip()] += 1

    return Figures(
        month=str(month),
        followed_new=follows.get("False", 0),
        followed_unblocked=follows.get("True", 0),
        unfollowed=len(by_type[ft.LINE_UNFOLLOWED]),
        registered_end=len(registered),
        registered_by_school=dict(by_school),
        registered_eligible=dict(eligible),
        school_answers=count(ft.SCHOOL_TYPE_SET, "school_type"),
        cases_opened=len(opened),
        cases_in_hours=sum(f.data.get("in_hours") is True for f in opened),
        cases_out_of_scope=sum(scope for _, scope in case_school.values()),
        cases_urgent_at_open=sum(f.data.get("urgent") is True for f in opened),
        opened_by_day=dict(Counter(local(f).strftime("%Y-%m-%d") for f in opened)),
        opened_by_weekday=dict(Counter(local(f).isoweekday() for f in opened)),
        opened_by_hour=dict(Counter(local(f).hour for f in opened)),
        opened_by_school=dict(Counter(_k(school) for school, _ in case_school.values())),
        cases_closed=len(by_type[ft.CASE_CLOSED]),
        closed_by_category=dict(
            Counter(_k(c) for f in by_type[ft.CASE_CLOSED] for c in set(_categories(f)))
        ),
        closed_by_grade=count(ft.CASE_CLOSED, "grade"),
        closed_by_gender=count(ft.CASE_CLOSED, "gender"),
        cases_handed_over=sum(f.data.get("handed_over") is True for f in by_type[ft.CASE_CLOSED]),
        messages_in=len(by_type[ft.MESSAGE_RECEIVED]),
        messages_out_counselor=out_counselor,
        messages_out_auto=out_auto,
        answered_in_hours=sum("reply" in c for c in in_hours_cases),
        answered_total=sum("reply" in c for c in month_cases),
        first_reply=Durations.of_ms(
            [ms(c["reply"], c["opened"]) for c in in_hours_cases if "reply" in c]
        ),
        first_reply_urgent=Durations.of_ms(
            [
                ms(c["reply"], c["opened"])
                for c in in_hours_cases
                if "reply" in c and c.get("urgent")
            ]
        ),
        waiting=Durations.of_ms(
            [ms(c["claim"], c["opened"]) for c in in_hours_cases if "claim" in c]
        ),
        length=Durations.of_ms(
            [ms(c["closed"], c["opened"]) for c in month_cases if "closed" in c]
        ),
        checkin_sent=len(by_type[ft.CHECKIN_SENT]),
        checkin_answers=count(ft.CHECKIN_ANSWERED, "choice"),
        checkin_skipped=count(ft.CHECKIN_SKIPPED, "reason"),
        urgent_cases=len(first_flag),
        urgent_out_of_hours=sum(f.data.get("in_hours") is False for f in first_flag.values()),
        urgent_by_keyword=dict(Counter(k for k, _ in keyword_cases)),
        urgent_by_risk=dict(Counter(c for c, _ in risk_cases)),
        flag_to_reply=Durations.of_ms(flag_to_reply),
        emergencies_by_type=count(ft.EMERGENCY_RAISED, "type"),
        emergency_contacts=count(ft.EMERGENCY_CONTACT, "agency"),
        emergency_results=count(ft.EMERGENCY_CONTACT, "result"),
        emergencies_closed=len(by_type[ft.EMERGENCY_CLOSED]),
        emergency_notifications=len(by_type[ft.EMERGENCY_NOTIFIED]),
        replies_by_purpose=dict(replies),
        reply_failures_by_purpose=count(ft.REPLY_FAILED, "purpose"),
        sends_by_method=dict(methods),
        media_refused=len(by_type[ft.MEDIA_REFUSED]),
        broadcasts=tuple(
            BroadcastRow(
                broadcast_id=b,
                started_day=r["day"],
                audience=r["audience"],
                recipients=r["recipients"],
                failures=r["failures"],
                finished=r["finished"],
            )
            for b, r in sorted(broadcasts.items())
        ),
        broadcast_recipients=sum(
            f.data.get("recipients") or 0 for f in by_type[ft.BROADCAST_CHUNK_SENT]
        ),
        broadcasts_refused=len(by_type[ft.BROADCAST_REFUSED]),
        pushes_by_kind=dict(pushes),
        free_replies_by_kind=dict(free),
        quota_limit=quota.data.get("limit") if quota else None,
        quota_used=quota.data.get("used") if quota else None,
        signature_rejected=count(ft.SIGNATURE_REJECTED, "reason"),
        logins=len(by_type[ft.LOGIN_SUCCEEDED]),
        logins_second_factor=sum(
            f.data.get("second_factor") is True for f in by_type[ft.LOGIN_SUCCEEDED]
        ),
        login_failures=count(ft.LOGIN_FAILED, "reason"),
        lockouts=count(ft.LOCKED_OUT, "staff_id"),
        staff=tuple(staff_rows),
        staff_names={
            i: s["name"]
            for i, s in staff.items()
            if "created" in s and isinstance(s.get("name"), str)
        },
        staff_changes=tuple(changes),
        audit=tuple(
            AuditRow(
                staff_id=who,
                case_views=views[who],
                cases_viewed=len(viewed[who]),
                replies=actions[(who, ft.REPLY_REQUESTED)],
                closes=actions[(who, ft.CASE_CLOSED)],
            )
            for who in audit_staff
        ),
        settings_changed=count(ft.SETTINGS_CHANGED, "what"),
        token=token,
        retention_runs=len(by_type[ft.RETENTION_RUN]),
        erased_messages=sum(f.data.get("erased_messages") or 0 for f in by_type[ft.RETENTION_RUN]),
        service_starts=dict(starts),
        service_stops=dict(stops),
        webhook_requests=sum(f.data.get("requests") or 0 for f in by_type[ft.WEBHOOK_REQUESTS]),
        webhook_by_status={k: n for k, n in by_status.items() if n},
        webhook_latency_ms={k: n for k, n in latency.items() if n},
        dead_letters=count(ft.BUS_DEAD_LETTERED, "queue"),
        sends_maybe_twice=count(ft.REPLY_SENT, "note").get(ft.NOTE_MAYBE_TWICE, 0),
        api_errors=dict(api_errors),
    )


def _categories(close: Fact) -> list[Any]:
    """A close's categories; a close from before they were a list names one ``category``; a
    close with none is counted once, as 不明 (None)."""
    categories = close.data.get("categories")
    if categories is None:
        categories = [close.data.get("category")]
    return list(categories) or [None]


def _k(value: Any) -> str:
    return "" if value is None else str(value)
