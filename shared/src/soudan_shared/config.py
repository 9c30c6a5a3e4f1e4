"""The section's configuration: typed, validated, read once from ``SOUDAN_CONFIG_DIR``.

The directory (``deploy/config`` in the repository, ``/app/config`` in the image) holds six YAML
files, each validated by one frozen model:

``hours.yaml`` → :class:`HoursConfig`
    Time zone, consultation periods (date ranges), weekly sessions per weekday with a
    last-acceptance time, closed dates, whether public holidays are closed (運営要領 第3(3)).
``messages.yaml`` → :class:`MessagesConfig`
    Every fixed text the account sends: greeting and operating policy on follow (第8-1), the
    school-type question and its answers (第8-2), auto-replies (第5(1), 第5(2), 第6), the
    inquiry pointer (第8-3) and the broadcast announcements (第5(3)).
``keywords.yaml`` → :class:`KeywordsConfig`
    Urgency keywords: the official 14 of 第5(4), always on, plus the section's extras.
``congestion.yaml`` → :class:`CongestionConfig`
    The limits beyond which the service counts as congested (第5(2)).
``agencies.yaml`` → :class:`AgenciesConfig`
    The emergency directory shown to counselors (第6): national hotlines and local contacts.
``categories.yaml`` → :class:`CategoriesConfig`
    The categories a counselor picks when closing a case (reported monthly, 第7-3).

:func:`load_config` reads them all and raises :class:`ConfigError`, one line naming the file and
the field, on a missing file, broken YAML or an invalid value, so a service refuses to start
rather than run on a half-understood configuration. Unknown keys are errors too: a misspelt key
would otherwise be silently ignored.

This module only describes and validates. Deciding whether the service is open now, how a
keyword matches a message or when the queue is congested belongs to the services.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Callable, Hashable
from datetime import date, time
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from yaml.nodes import MappingNode, ScalarNode

__all__ = [
    "CONFIG_FILES",
    "LINE_QUICK_REPLY_LABEL_MAX",
    "LINE_TEXT_MAX",
    "OFFICIAL_KEYWORDS",
    "RISK_CATEGORIES",
    "WEEKDAYS",
    "AgenciesConfig",
    "Agency",
    "AutoReplies",
    "BroadcastSchedule",
    "BroadcastTemplates",
    "CategoriesConfig",
    "Category",
    "CheckinChoice",
    "CheckinConfig",
    "ConfigError",
    "CongestionConfig",
    "CongestionEstimate",
    "CongestionLimits",
    "ConsultationPeriod",
    "DateOverride",
    "DateRange",
    "FollowMessages",
    "HoursConfig",
    "KeywordWindow",
    "KeywordsConfig",
    "MenuReplies",
    "MessagesConfig",
    "QuietHours",
    "RichMenuConfig",
    "RichMenuLabels",
    "SchoolTypeChoice",
    "SchoolTypeQuestion",
    "Session",
    "SoudanConfig",
    "WeeklyHours",
    "load_config",
    "parse_clock",
]

OFFICIAL_KEYWORDS: Final[tuple[str, ...]] = (
    "死ぬ",
    "死に",
    "自殺",
    "殺せ",
    "死ね",
    "殺し",
    "消えたい",
    "リスカ",
    "虐待",
    "いじめ",
    "暴力",
    "暴行",
    "自傷",
    "助け",
)
"""The keywords of 運営要領 第5(4). Always on, whatever ``keywords.yaml`` says."""

RISK_CATEGORIES: Final[tuple[str, ...]] = ("自殺念慮", "方法・手段", "自傷", "暴力・虐待")
"""The categories of triage's risk reader (``risk.yaml``), in the order the report lists them.
One list for triage (which reads them) and reporting (which counts them)."""

WEEKDAYS: Final[tuple[str, ...]] = (
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
)
"""Weekday keys of ``hours.yaml``, in :meth:`datetime.date.weekday` order."""

LINE_TEXT_MAX: Final = 5000
"""LINE's limit on the characters of one text message."""

LINE_QUICK_REPLY_LABEL_MAX: Final = 20
"""LINE's limit on the characters of a quick-reply button label."""

LINE_QUICK_REPLY_ITEMS_MAX: Final = 13


class ConfigError(Exception):
    """The configuration cannot be used; ``str(error)`` is one line naming the file and field."""

    def __init__(self, file: str, detail: str) -> None:
        super().__init__(f"{file}: {detail}")
        self.file = file
        self.detail = detail


# -- field types -------------------------------------------------------------------------------

_CLOCK = re.compile(r"(?P<hour>[0-9]{1,2}):(?P<minute>[0-9]{2})")
_KEY = r"^[a-z][a-z0-9_]*$"
_PHONE = re.compile(r"#?[0-9][0-9-]*")


def parse_clock(value: object) -> time:
    """``"HH:MM"`` (00:00-23:59) as a time of day; ``ValueError`` naming the value otherwise."""
    if isinstance(value, time):
        return value
    match = _CLOCK.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match["hour"]) > 23 or int(match["minute"]) > 59:
        raise ValueError(f"expected a time of day as HH:MM (00:00-23:59), got {value!r}")
    return time(int(match["hour"]), int(match["minute"]))


ClockTime = Annotated[
    time,
    BeforeValidator(parse_clock),
    PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str),
]
"""A time of day written ``"HH:MM"``; sessions do not cross midnight, so there is no 24:00."""

Key = Annotated[str, StringConstraints(pattern=_KEY, max_length=40)]
"""A stable identifier stored with data (``school_type``, ``category``): labels may change, keys
must not."""

Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)]

Text = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=LINE_TEXT_MAX)
]
"""A text sent as is (never passed through ``str.format``)."""

Note = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]


def _placeholder_check(required: frozenset[str], optional: frozenset[str]) -> Callable[[str], str]:
    def check(text: str) -> str:
        try:
            fields = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ValueError(f"{exc}; write a literal brace as {{{{ or }}}}") from None
        found: set[str] = set()
        for _, name, spec, conversion in fields:
            if name is None:
                continue
            if name not in required | optional or spec or conversion:
                allowed = ", ".join(f"{{{n}}}" for n in sorted(required | optional)) or "none"
                raise ValueError(f"unknown placeholder {{{name}}} (allowed: {allowed})")
            found.add(name)
        missing = required - found
        if missing:
            raise ValueError(
                "missing placeholder " + ", ".join(f"{{{n}}}" for n in sorted(missing))
            )
        return text

    return check


def _template(*required: str, optional: tuple[str, ...] = ()) -> AfterValidator:
    """A check that a ``str.format`` template uses ``required`` and at most ``optional`` too."""
    return AfterValidator(_placeholder_check(frozenset(required), frozenset(optional)))


_TemplateText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=LINE_TEXT_MAX)
]
OutOfHoursTemplate = Annotated[_TemplateText, _template("next_open")]
HoursReplyTemplate = Annotated[_TemplateText, _template(optional=("hours", "status"))]
UrgentOutOfHoursTemplate = Annotated[_TemplateText, _template(optional=("next_open",))]
PeriodNoticeTemplate = Annotated[_TemplateText, _template("period")]
WaitTemplate = Annotated[_TemplateText, _template(optional=("ahead", "wait"))]


def _phone(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f'write the phone number in quotes, e.g. "{value}"')
    if isinstance(value, str) and not _PHONE.fullmatch(value.strip()):
        raise ValueError(f"expected digits and hyphens, e.g. 0120-0-78310, got {value!r}")
    return value.strip() if isinstance(value, str) else value


Phone = Annotated[str, BeforeValidator(_phone)]

PositiveCount = Annotated[int, Field(strict=True, gt=0)]


def _unique(values: list[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what} {value!r}")
        seen.add(value)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- hours.yaml --------------------------------------------------------------------------------


class DateRange(_Model):
    """Whole days from ``start`` to ``end``, both included, in the configured time zone."""

    start: date
    end: date
    note: Note = ""

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self


class ConsultationPeriod(DateRange):
    """A consultation period (相談実施期間); outside every period the service is closed.

    ``weekly``, when given, replaces the file's ``weekly`` hours on the days of this period.
    """

    name: Label
    weekly: WeeklyHours | None = None


class Session(_Model):
    """One opening of a day: counselors answer from ``open`` to ``close``.

    New consultations are accepted until ``last_acceptance`` (defaults to ``close``); after it,
    conversations already under way go on until ``close``. ``open`` < ``last_acceptance`` <=
    ``close``, all on the same day.
    """

    open: ClockTime
    close: ClockTime
    last_acceptance: ClockTime

    @model_validator(mode="before")
    @classmethod
    def _default_last_acceptance(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("last_acceptance") is None and "close" in data:
            return {**data, "last_acceptance": data["close"]}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> Session:
        if not self.open < self.close:
            raise ValueError(f"open {self.open:%H:%M} must be before close {self.close:%H:%M}")
        if not self.open < self.last_acceptance <= self.close:
            raise ValueError(
                f"last_acceptance {self.last_acceptance:%H:%M} must be after open "
                f"{self.open:%H:%M} and not after close {self.close:%H:%M}"
            )
        return self


def _sessions(value: Any) -> Any:
    """A weekday may be written as a list of sessions, one session mapping, or empty (closed)."""
    if value is None:
        return ()
    if isinstance(value, dict):
        return (value,)
    return value


def _not_overlapping(sessions: tuple[Session, ...]) -> tuple[Session, ...]:
    ordered = tuple(sorted(sessions, key=lambda s: s.open))
    for earlier, later in itertools.pairwise(ordered):
        if later.open < earlier.close:
            raise ValueError(
                f"sessions {earlier.open:%H:%M}-{earlier.close:%H:%M} and "
                f"{later.open:%H:%M}-{later.close:%H:%M} overlap"
            )
    return ordered


DaySessions = Annotated[
    tuple[Session, ...], BeforeValidator(_sessions), AfterValidator(_not_overlapping)
]


class WeeklyHours(_Model):
    """Sessions per weekday, sorted by opening time; an empty weekday is closed.

    ``holiday`` gives the sessions of Japanese national holidays (振替休日 included); left out,
    a holiday keeps the sessions of its weekday. (``closed_on_public_holidays`` closes them.)
    """

    monday: DaySessions = ()
    tuesday: DaySessions = ()
    wednesday: DaySessions = ()
    thursday: DaySessions = ()
    friday: DaySessions = ()
    saturday: DaySessions = ()
    sunday: DaySessions = ()
    holiday: DaySessions | None = None

    def sessions_on(self, weekday: int) -> tuple[Session, ...]:
        """The sessions of ``weekday`` (0 = Monday, as :meth:`datetime.date.weekday`)."""
        sessions: tuple[Session, ...] = getattr(self, WEEKDAYS[weekday])
        return sessions


def _closed_dates(value: Any) -> Any:
    """A closed date may be written as a plain date (one day) or as a range mapping."""
    if isinstance(value, list):
        return [
            {"start": item, "end": item} if isinstance(item, date | str) else item for item in value
        ]
    return value


class DateOverride(_Model):
    """The sessions of one date, whatever the periods, closed dates and holidays say.

    An empty ``sessions`` closes the day.
    """

    date: date
    sessions: DaySessions = ()
    note: Note = ""


class HoursConfig(_Model):
    """``hours.yaml``: when the service is open (運営要領 第3(3)).

    Dates and times are local to ``timezone``. A date listed in ``overrides`` has exactly the
    sessions given there. Any other day is open only if it lies in one of ``periods``, is not in
    ``closed_dates``, and is not a public holiday while ``closed_on_public_holidays`` is set; it
    is then open during the sessions of its weekday (or of ``holiday`` on a national holiday),
    taken from its period's ``weekly`` if the period has one, else from ``weekly``.
    """

    timezone: ZoneInfo
    periods: tuple[ConsultationPeriod, ...]
    weekly: WeeklyHours
    closed_dates: Annotated[tuple[DateRange, ...], BeforeValidator(_closed_dates)] = ()
    closed_on_public_holidays: bool
    overrides: tuple[DateOverride, ...] = ()

    @field_validator("overrides")
    @classmethod
    def _one_override_per_date(
        cls, overrides: tuple[DateOverride, ...]
    ) -> tuple[DateOverride, ...]:
        _unique([o.date.isoformat() for o in overrides], "override date")
        return overrides

    @field_validator("periods")
    @classmethod
    def _unique_names(
        cls, periods: tuple[ConsultationPeriod, ...]
    ) -> tuple[ConsultationPeriod, ...]:
        _unique([p.name for p in periods], "period name")
        return periods


# -- messages.yaml -----------------------------------------------------------------------------


class FollowMessages(_Model):
    """Sent when someone adds the account (第8-1): a greeting, then the operating policy."""

    greeting: Text
    policy: Text


class SchoolTypeChoice(_Model):
    """One quick-reply button of the school-type question.

    ``eligible`` is false for students outside the target group of 第3(2); their cases are
    marked 対象外 and answered all the same (第8-2).
    """

    key: Key
    label: Annotated[
        str,
        StringConstraints(
            strip_whitespace=True, min_length=1, max_length=LINE_QUICK_REPLY_LABEL_MAX
        ),
    ]
    eligible: bool


class SchoolTypeQuestion(_Model):
    """The question asked after the policy, and the two acknowledgements of its answer."""

    question: Text
    choices: Annotated[
        tuple[SchoolTypeChoice, ...], Field(min_length=1, max_length=LINE_QUICK_REPLY_ITEMS_MAX)
    ]
    answered_eligible: Text
    answered_not_eligible: Text

    @field_validator("choices")
    @classmethod
    def _unique_choices(cls, choices: tuple[SchoolTypeChoice, ...]) -> tuple[SchoolTypeChoice, ...]:
        _unique([c.key for c in choices], "key")
        _unique([c.label for c in choices], "label")
        return choices


class AutoReplies(_Model):
    """Fixed replies sent without a counselor (第5(1), 第5(2), 第6).

    ``out_of_hours`` is a template with ``{next_open}`` (the next opening, written by the
    sender in Japanese); ``out_of_hours_urgent`` may use it too. ``congested`` and
    ``wait_notice`` may use ``{ahead}`` (how many wait before the student) and ``{wait}`` (the
    estimated wait, rounded up, e.g. 「20分ほど」). ``wait_notice`` goes to a student whose new
    case (in hours, not urgent) no counselor has taken after ``wait_notice_after_minutes``
    (None: never); ``wait_notice_first`` instead when nobody waits before them. The others are
    sent as is.
    """

    out_of_hours: OutOfHoursTemplate
    out_of_hours_urgent: UrgentOutOfHoursTemplate
    congested: WaitTemplate
    media_refused: Text
    media_refused_interval_minutes: PositiveCount = Field(
        default=10,
        description="media_refused is sent to one user at most once in this many minutes",
    )
    no_next_open: Text = Field(
        default="次の相談期間が決まったら、このLINEでお知らせします",
        description="stands in for {next_open} when no opening is configured ahead",
    )
    wait_notice: WaitTemplate = (
        "メッセージありがとう。ちゃんと届いています。\n"
        "いま、あなたの前に{ahead}人が待っています。お返事まで{wait}かかるかもしれません。\n"
        "順番にお返事するので、このまま待っていてね。"
    )
    wait_notice_first: Text = (
        "メッセージありがとう。ちゃんと届いています。\n"
        "次があなたの番です。相談員の手があいたら、お返事するね。"
    )
    wait_notice_after_minutes: PositiveCount | None = Field(
        default=10,
        description="a new case in hours that no counselor took within this many minutes gets "
        "wait_notice once (null: never)",
    )


class BroadcastSchedule(_Model):
    """When dispatch sends the announcements by itself (第5(3)); each runs once.

    ``period_notice_days_before``: the period notice goes out that many days before each
    consultation period starts, at ``period_notice_at`` (None: never by itself). ``open_now``:
    "相談を受け付けています" at the first opening of each period (``period_start``), at every
    opening (``every_session``), or never (``off``).
    """

    period_notice_days_before: Annotated[int, Field(ge=0, le=60)] | None = 7
    period_notice_at: ClockTime = time(12, 0)
    open_now: Literal["off", "period_start", "every_session"] = "period_start"
    audience: Literal["registered", "target_group"] = "registered"


class BroadcastTemplates(_Model):
    """The section's announcements sent to every registered user (第5(3)).

    ``period_notice`` is a template with ``{period}`` (the periods and hours, written by the
    sender); ``open_now`` is sent as is.
    """

    period_notice: PeriodNoticeTemplate
    open_now: Text
    schedule: BroadcastSchedule = Field(default_factory=lambda: BroadcastSchedule())


RichMenuLabel = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=12)
]


class RichMenuLabels(_Model):
    """The four entries of the rich menu, as printed on its image."""

    consult: RichMenuLabel = "相談する"
    hours: RichMenuLabel = "相談できる時間"
    policy: RichMenuLabel = "運用ポリシー"
    inquiry: RichMenuLabel = "お問い合わせ"


class RichMenuConfig(_Model):
    """The account's rich menu (第8): ``soudan-dispatch richmenu apply`` creates it.

    ``inquiry_url`` is the section's web page for usage questions (第8-3); without it, the
    first ``https://`` address in ``inquiry`` is used.
    """

    chat_bar_text: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=14)
    ] = "メニュー"
    labels: RichMenuLabels = Field(default_factory=lambda: RichMenuLabels())
    inquiry_url: Annotated[str, StringConstraints(pattern=r"^https://\S+$")] | None = None


class MenuReplies(_Model):
    """Answers to the rich menu's entries (第8-1, 第8-3).

    ``hours`` is a template that may use ``{hours}`` (the periods, weekly hours and closed days,
    written by the sender from ``hours.yaml``) and ``{status}``: ``open_now`` while new
    consultations are taken, else ``next_open`` (a template with ``{next_open}``), else
    ``auto_reply.no_next_open``. The policy entry answers with ``follow.policy`` and the inquiry
    entry with ``inquiry``.
    """

    hours: HoursReplyTemplate = "【相談できる日と時間】\n{hours}\n\n{status}"
    open_now: Text = "いま、相談を受け付けています。"
    next_open: OutOfHoursTemplate = "次に相談できるのは {next_open} からです。"


class CheckinChoice(_Model):
    """One quick-reply answer of the check-in; ``key`` is stored with the case and counted in
    the report, ``reply`` answers the tap."""

    key: Key
    label: Annotated[
        str,
        StringConstraints(
            strip_whitespace=True, min_length=1, max_length=LINE_QUICK_REPLY_LABEL_MAX
        ),
    ]
    reply: Text


class QuietHours(_Model):
    """The students' hours of sleep (in ``hours.yaml``'s time zone): nothing is pushed from
    ``start`` until ``end`` (``start`` after ``end`` spans midnight; equal: no quiet hours)."""

    start: ClockTime = time(21, 30)
    end: ClockTime = time(7, 30)


class CheckinConfig(_Model):
    """The one short question sent after a counselor closes a case.

    Not after an emergency; not for 対象外 cases unless ``out_of_scope``; never in the quiet
    hours (a close then sends it when they end, unless the student wrote again meanwhile or
    blocked the account); at most once per case.
    """

    enabled: bool = True
    question: Text = (
        "今日は話してくれてありがとう。話してみて、どうだったかな？\n下のボタンで教えてね。"
    )
    choices: Annotated[
        tuple[CheckinChoice, ...], Field(min_length=1, max_length=LINE_QUICK_REPLY_ITEMS_MAX)
    ] = (
        CheckinChoice(
            key="good",
            label="話してよかった",
            reply="教えてくれてありがとう。また話したくなったら、いつでもメッセージを送ってね。",
        ),
        CheckinChoice(
            key="neutral",
            label="ふつう",
            reply="教えてくれてありがとう。また話したくなったら、いつでもメッセージを送ってね。",
        ),
        CheckinChoice(
            key="bad",
            label="よくなかった",
            reply="正直に教えてくれてありがとう。うまく力になれなくて、ごめんね。"
            "また話したくなったら、いつでもメッセージを送ってね。",
        ),
    )
    out_of_scope: bool = False
    quiet_hours: QuietHours = QuietHours()

    @field_validator("choices")
    @classmethod
    def _unique_choices(cls, choices: tuple[CheckinChoice, ...]) -> tuple[CheckinChoice, ...]:
        _unique([c.key for c in choices], "key")
        _unique([c.label for c in choices], "label")
        return choices


class MessagesConfig(_Model):
    """``messages.yaml``: every fixed text of the account, in Japanese.

    Texts are plain text (outgoing messages are text only, 第5(1)) of at most
    :data:`LINE_TEXT_MAX` characters; surrounding whitespace is dropped.
    """

    follow: FollowMessages
    school_type: SchoolTypeQuestion
    auto_reply: AutoReplies
    inquiry: Text
    broadcast: BroadcastTemplates
    menu: MenuReplies = MenuReplies()
    rich_menu: RichMenuConfig = Field(default_factory=lambda: RichMenuConfig())
    checkin: CheckinConfig = Field(default_factory=lambda: CheckinConfig())


# -- keywords.yaml -----------------------------------------------------------------------------

Keyword = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=50, pattern=r"^[^\r\n]+$"),
]


def _dedupe(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


class KeywordWindow(_Model):
    """A keyword split over a user's consecutive messages is caught within this window: the
    last ``messages`` messages (the new one included) sent within ``minutes`` of the new one."""

    messages: PositiveCount = 5
    minutes: PositiveCount = 2


class KeywordsConfig(_Model):
    """``keywords.yaml``: words that flag a message urgent (第5(4)).

    ``official`` is always exactly :data:`OFFICIAL_KEYWORDS`: the file may list them (or some of
    them, or none) for the reader's benefit, but cannot remove one, and may not add others there.
    ``extra`` holds the section's additions, without duplicates of the official ones. Matching
    (kana folding, spacing, slang) is the detector's business, not the list's.
    """

    official: tuple[Keyword, ...] = OFFICIAL_KEYWORDS
    extra: tuple[Keyword, ...] = ()
    window: KeywordWindow = KeywordWindow()

    @field_validator("official")
    @classmethod
    def _always_official(cls, listed: tuple[str, ...]) -> tuple[str, ...]:
        for word in listed:
            if word not in OFFICIAL_KEYWORDS:
                raise ValueError(
                    f"{word!r} is not one of the 14 official keywords of 第5(4); add it to extra"
                )
        return OFFICIAL_KEYWORDS

    @field_validator("extra")
    @classmethod
    def _extra_without_official(cls, extra: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(w for w in _dedupe(extra) if w not in OFFICIAL_KEYWORDS)

    @property
    def active(self) -> tuple[str, ...]:
        """Every active keyword: the official ones first, then the extras."""
        return self.official + self.extra


# -- congestion.yaml ---------------------------------------------------------------------------


class CongestionLimits(_Model):
    """The service counts as congested while any one of these is exceeded."""

    max_waiting_cases: PositiveCount
    max_oldest_wait_minutes: PositiveCount
    max_estimated_wait_minutes: PositiveCount


class CongestionEstimate(_Model):
    """What the estimated wait assumes when the store cannot tell yet.

    ``counselors``: counselors answering when none is seen holding a case; ``minutes_per_case``:
    the time one case takes when too few cases were closed recently to measure it.
    """

    counselors: PositiveCount = 4
    minutes_per_case: PositiveCount = 40


class CongestionConfig(_Model):
    """``congestion.yaml``: when a message gets the congestion auto-reply (第5(2))."""

    limits: CongestionLimits
    estimate: CongestionEstimate = CongestionEstimate()


# -- agencies.yaml -----------------------------------------------------------------------------

AgencyKind = Literal[
    "hotline",
    "police",
    "ambulance",
    "child_guidance_center",
    "school",
    "education_bureau",
    "section",
    "medical",
    "other",
]


class Agency(_Model):
    """One entry of the emergency directory.

    ``example`` marks an entry whose number is a placeholder still to be replaced; the console
    shows it as such rather than let a counselor dial it.
    """

    name: Label
    kind: AgencyKind
    phone: Phone | None = None
    hours: Note = ""
    note: Note = ""
    example: bool = False


class AgenciesConfig(_Model):
    """``agencies.yaml``: whom counselors contact in an emergency (第6).

    ``hotlines`` are the nationwide numbers also given to students; ``contacts`` are the local
    agencies and the section, agreed with the section.
    """

    hotlines: tuple[Agency, ...]
    contacts: tuple[Agency, ...]


# -- categories.yaml ---------------------------------------------------------------------------


class Category(_Model):
    """A close category: ``key`` is stored with the case, ``label`` is shown and reported."""

    key: Key
    label: Label


DEFAULT_GRADES = tuple(
    Category(key=key, label=label)
    for key, label in (
        ("jh1", "中1"),
        ("jh2", "中2"),
        ("jh3", "中3"),
        ("sh1", "高1"),
        ("sh2", "高2"),
        ("sh3", "高3"),
        ("other", "その他"),
    )
)
DEFAULT_GENDERS = tuple(
    Category(key=key, label=label)
    for key, label in (("male", "男性"), ("female", "女性"), ("other", "その他・答えない"))
)
UNKNOWN_LABEL = "不明"  # an attribute the counselor left unrecorded at the close


class CategoriesConfig(_Model):
    """``categories.yaml``: what a counselor records when closing a case, all reported monthly:
    one or more ``categories``, and (optional, 不明 when left empty) the student's ``grades``
    (学年) and ``genders`` (性別) as the board counts them."""

    categories: Annotated[tuple[Category, ...], Field(min_length=1)]
    grades: Annotated[tuple[Category, ...], Field(min_length=1)] = DEFAULT_GRADES
    genders: Annotated[tuple[Category, ...], Field(min_length=1)] = DEFAULT_GENDERS

    @field_validator("categories", "grades", "genders")
    @classmethod
    def _unique_categories(cls, categories: tuple[Category, ...]) -> tuple[Category, ...]:
        _unique([c.key for c in categories], "key")
        _unique([c.label for c in categories], "label")
        if UNKNOWN_LABEL in {c.label for c in categories}:
            raise ValueError(f"「{UNKNOWN_LABEL}」は記録しなかったときの名前なので、使えません")
        return categories


# -- the whole -------------------------------------------------------------------------------


class SoudanConfig(_Model):
    """Everything in the configuration directory, validated."""

    hours: HoursConfig
    messages: MessagesConfig
    keywords: KeywordsConfig
    congestion: CongestionConfig
    agencies: AgenciesConfig
    categories: CategoriesConfig


CONFIG_FILES: Final[dict[str, tuple[str, type[BaseModel]]]] = {
    "hours": ("hours.yaml", HoursConfig),
    "messages": ("messages.yaml", MessagesConfig),
    "keywords": ("keywords.yaml", KeywordsConfig),
    "congestion": ("congestion.yaml", CongestionConfig),
    "agencies": ("agencies.yaml", AgenciesConfig),
    "categories": ("categories.yaml", CategoriesConfig),
}
"""Field of :class:`SoudanConfig` → (file name, model)."""


def load_config(config_dir: Path) -> SoudanConfig:
    """Read and validate every file of ``config_dir``; :class:`ConfigError` on the first bad one."""
    if not config_dir.is_dir():
        raise ConfigError(str(config_dir), "configuration directory not found (SOUDAN_CONFIG_DIR)")
    parts = {
        field: _load_file(config_dir / name, model) for field, (name, model) in CONFIG_FILES.items()
    }
    return SoudanConfig.model_validate(parts)


def _load_file(path: Path, model: type[BaseModel]) -> BaseModel:
    data = _read_yaml(path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path.name, describe_errors(exc)) from None


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with three guards for hand-edited files.

    An unquoted ``17:00`` stays the text "17:00" instead of YAML 1.1's base-60 integer 1020; a
    key written twice in one mapping is an error instead of the last one silently winning; an
    impossible date such as 2026-02-30 is an error with its line, not a bare ``ValueError``.
    """

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode and implicit[0] and _CLOCK.fullmatch(value):
            return "tag:yaml.org,2002:str"
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                )
            seen.add(key_node.value)
        return super().construct_mapping(node, deep)

    def construct_checked_timestamp(self, node: ScalarNode) -> Any:
        try:
            return self.construct_yaml_timestamp(node)
        except ValueError as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"invalid date {node.value!r} ({exc})", node.start_mark
            ) from None


_ConfigLoader.add_constructor(
    "tag:yaml.org,2002:timestamp", _ConfigLoader.construct_checked_timestamp
)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(path.name, f"file not found in {path.parent}") from None
    except UnicodeDecodeError:
        raise ConfigError(path.name, "not UTF-8 text; save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(path.name, f"cannot be read ({exc.strerror})") from None
    return parse_yaml(text, path.name)


def parse_yaml(text: str, name: str) -> dict[str, Any]:
    """The mapping a configuration file's text holds, read with the guards of
    :class:`_ConfigLoader`; :class:`ConfigError` naming ``name`` and the line otherwise."""
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(name, f"invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(name, "invalid YAML: " + " ".join(str(exc).split())) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(name, f"expected a mapping of keys at top level, got {_kind(data)}")
    return data


_MESSAGES = {
    "missing": "required key is missing",
    "extra_forbidden": "unknown key",
}
_SHOWN_ERRORS = 3


def describe_errors(exc: ValidationError) -> str:
    """Pydantic's errors as one line: ``periods[0].end: …; weekly.funday: unknown key``."""
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:_SHOWN_ERRORS]:
        where = _location(err["loc"])
        message = _MESSAGES.get(err["type"], err["msg"].removeprefix("Value error, "))
        if err["type"] not in _MESSAGES and err["type"] != "value_error":
            value = err.get("input")
            if isinstance(value, str | int | float | date | time) or value is None:
                message += f" (got {value!r})"
        parts.append(f"{where}: {message}" if where else message)
    if len(errors) > _SHOWN_ERRORS:
        parts.append(f"and {len(errors) - _SHOWN_ERRORS} more")
    return "; ".join(" ".join(p.split()) for p in parts)


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a text"
    return type(value).__name__
