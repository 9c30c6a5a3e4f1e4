"""The figures of one month's report: plain values, no labels, no layout.

:mod:`soudan_reporting.aggregate` computes them from ``events`` with MongoDB pipelines;
:mod:`soudan_reporting.factgen` computes them independently from the facts it generates, so a
test can compare the two whole; :mod:`soudan_reporting.report` turns them into labelled tables.

Counts keyed by a value (a category, a purpose, a reason) are dicts holding only the values
that occurred; the report adds the zero rows. Durations are in seconds; percentiles are by
nearest rank (the value at position ⌈p·n⌉ of the sorted durations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

PERCENTILES = (50, 90)
NO_SCHOOL_TYPE = ""  # key of users and cases whose school type is not known
COUNSELOR_REPLY = "counselor_reply"


def send_kind(purpose: str) -> str:
    """How the month's LINE budget counts a sent text: a counselor's or an automatic reply
    (broadcasts are counted by their recipients)."""
    return "counselor" if purpose == COUNSELOR_REPLY else "auto"


def nearest_rank(percent: int, n: int) -> int:
    """The 1-based rank of the ``percent``-th percentile of ``n`` sorted values (integers only,
    so the database and Python agree exactly)."""
    return (percent * n + 99) // 100


@dataclass(frozen=True)
class Durations:
    """Median and 90th percentile of a set of durations, in seconds (None when n is 0)."""

    n: int = 0
    p50: float | None = None
    p90: float | None = None

    @classmethod
    def of_ms(cls, milliseconds: list[int]) -> Durations:
        values = sorted(milliseconds)
        if not values:
            return cls()
        n = len(values)
        return cls(
            n, values[nearest_rank(50, n) - 1] / 1000, values[nearest_rank(90, n) - 1] / 1000
        )


@dataclass(frozen=True)
class BroadcastRow:
    broadcast_id: str
    started_day: str | None  # JST date of broadcast.started, when it was this month
    audience: str | None
    recipients: int
    failures: int
    finished: bool


@dataclass(frozen=True)
class StaffRow:
    """A staff account that exists at month end (created, not disabled)."""

    staff_id: str
    name: str | None
    role: str | None
    password_age_days: int | None  # whole days from the last change (or creation) to month end
    second_factor: bool


@dataclass(frozen=True)
class StaffChange:
    day: str  # JST date
    staff_id: str
    what: str  # created | disabled | enabled | role_changed
    before: str | None
    after: str | None
    by: str | None


@dataclass(frozen=True)
class AuditRow:
    staff_id: str
    case_views: int
    cases_viewed: int
    replies: int
    closes: int


@dataclass(frozen=True)
class TokenState:
    """The LINE channel access token at month end, from the token facts (none: a static token)."""

    source: str | None = None  # the fact type that last issued it; None when there is none
    issued_at: datetime | None = None
    age_days: int | None = None
    expires_at: datetime | None = None
    key_id: str | None = None
    revoked: bool = False  # the last token fact revoked it and none issued one since


@dataclass(frozen=True)
class Figures:
    month: str

    # 登録状況
    followed_new: int = 0
    followed_unblocked: int = 0
    unfollowed: int = 0
    registered_end: int = 0
    registered_by_school: dict[str, int] = field(default_factory=dict)
    registered_eligible: dict[str, int] = field(default_factory=dict)  # yes | no | unknown
    school_answers: dict[str, int] = field(default_factory=dict)

    # 相談件数
    cases_opened: int = 0
    cases_in_hours: int = 0
    cases_out_of_scope: int = 0
    cases_urgent_at_open: int = 0
    opened_by_day: dict[str, int] = field(default_factory=dict)  # "2026-10-01"
    opened_by_weekday: dict[int, int] = field(default_factory=dict)  # ISO 1..7
    opened_by_hour: dict[int, int] = field(default_factory=dict)
    opened_by_school: dict[str, int] = field(default_factory=dict)
    cases_closed: int = 0
    # each closed case once per category it was given (a case of two categories is in both)
    closed_by_category: dict[str, int] = field(default_factory=dict)
    closed_by_grade: dict[str, int] = field(default_factory=dict)  # grade key; "" 不明
    closed_by_gender: dict[str, int] = field(default_factory=dict)  # gender key; "" 不明
    cases_handed_over: int = 0  # closed cases handed over to another service (他の窓口)
    messages_in: int = 0
    messages_out_counselor: int = 0
    messages_out_auto: int = 0
    answered_in_hours: int = 0  # opened in hours this month and answered by a counselor
    answered_total: int = 0
    first_reply: Durations = field(default_factory=Durations)  # cases opened in hours
    first_reply_urgent: Durations = field(default_factory=Durations)
    waiting: Durations = field(default_factory=Durations)  # opened → first claim, in hours
    length: Durations = field(default_factory=Durations)  # opened → closed
    # 終わったあとの問いかけ (check-in after a close)
    checkin_sent: int = 0
    checkin_answers: dict[str, int] = field(default_factory=dict)  # choice key
    checkin_skipped: dict[str, int] = field(default_factory=dict)  # reason

    # 緊急性の高い相談
    urgent_cases: int = 0  # distinct cases flagged this month
    urgent_out_of_hours: int = 0
    urgent_by_keyword: dict[str, int] = field(default_factory=dict)  # distinct cases
    urgent_by_risk: dict[str, int] = field(default_factory=dict)  # risk category: distinct cases
    flag_to_reply: Durations = field(default_factory=Durations)
    emergencies_by_type: dict[str, int] = field(default_factory=dict)
    emergency_contacts: dict[str, int] = field(default_factory=dict)  # agency
    emergency_results: dict[str, int] = field(default_factory=dict)
    emergencies_closed: int = 0
    emergency_notifications: int = 0

    # 自動応答・一斉送信
    replies_by_purpose: dict[str, int] = field(default_factory=dict)  # reply.sent
    reply_failures_by_purpose: dict[str, int] = field(default_factory=dict)
    sends_by_method: dict[str, int] = field(default_factory=dict)  # reply | push (requests)
    media_refused: int = 0
    broadcasts: tuple[BroadcastRow, ...] = ()
    broadcast_recipients: int = 0  # from chunks sent this month (quota)
    broadcasts_refused: int = 0

    # 今月のLINEの通数: what counts against the plan (pushes, broadcast recipients), what is free
    pushes_by_kind: dict[str, int] = field(default_factory=dict)  # counselor | auto (reply.sent)
    free_replies_by_kind: dict[str, int] = field(default_factory=dict)  # by reply token
    quota_limit: int | None = None  # the plan, at the month's last line.quota_read
    quota_used: int | None = None  # LINE's own count then

    # 情報セキュリティ
    signature_rejected: dict[str, int] = field(default_factory=dict)  # reason
    logins: int = 0
    logins_second_factor: int = 0
    login_failures: dict[str, int] = field(default_factory=dict)  # reason
    lockouts: dict[str, int] = field(default_factory=dict)  # staff_id
    staff: tuple[StaffRow, ...] = ()
    staff_names: dict[str, str] = field(default_factory=dict)  # everyone ever created, by id
    staff_changes: tuple[StaffChange, ...] = ()
    audit: tuple[AuditRow, ...] = ()
    settings_changed: dict[str, int] = field(default_factory=dict)
    token: TokenState = field(default_factory=TokenState)
    retention_runs: int = 0
    erased_messages: int = 0

    # システム稼働
    service_starts: dict[str, int] = field(default_factory=dict)
    service_stops: dict[str, int] = field(default_factory=dict)
    webhook_requests: int = 0
    webhook_by_status: dict[str, int] = field(default_factory=dict)
    webhook_latency_ms: dict[str, int] = field(default_factory=dict)  # bucket "<=50" → n
    dead_letters: dict[str, int] = field(default_factory=dict)  # queue
    sends_maybe_twice: int = 0  # pushes after a reply tried before a crash (reply.sent note)
    api_errors: dict[str, int] = field(default_factory=dict)  # "endpoint status"

    @property
    def response_rate(self) -> float | None:
        """応答率: cases opened in hours that a counselor answered ÷ cases opened in hours."""
        if self.cases_in_hours == 0:
            return None
        return self.answered_in_hours / self.cases_in_hours


# -- the webhook latency histogram ------------------------------------------------------------


def bucket_bound(key: str) -> float | None:
    """``"<=50"`` → 50.0, ``"+Inf"`` → inf, anything else → None (ignored)."""
    if key in ("+Inf", "inf", "Inf"):
        return float("inf")
    if key.startswith("<="):
        try:
            return float(key[2:])
        except ValueError:
            return None
    return None


def histogram_percentile(buckets: dict[str, int], percent: int) -> float | None:
    """The upper bound of the bucket holding the ``percent``-th percentile request (inf when it
    is in the open-ended bucket); None without requests. Counts are per bucket."""
    bounded = sorted(
        (bound, n) for key, n in buckets.items() if (bound := bucket_bound(key)) is not None
    )
    total = sum(n for _, n in bounded)
    if total == 0:
        return None
    rank = nearest_rank(percent, total)
    seen = 0
    for bound, n in bounded:
        seen += n
        if seen >= rank:
            return bound
    return bounded[-1][0]


def per_bucket(cumulative: dict[str, int]) -> dict[str, int]:
    """Cumulative (Prometheus-style) bucket counts → counts per bucket."""
    ordered = sorted(
        (bound, key, n) for key, n in cumulative.items() if (bound := bucket_bound(key)) is not None
    )
    out: dict[str, int] = {}
    previous = 0
    for _, key, n in ordered:
        out[key] = n - previous
        previous = n
    return out
