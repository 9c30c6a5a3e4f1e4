"""The console's own documents and vocabularies.

Cases, messages and users are the shared records of :mod:`soudan_shared.records`; what only the
console keeps (staff, sessions, notes, emergencies, canned responses, its own security settings,
broadcast requests) lives here, in collections prefixed ``console_``.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from soudan_shared.contracts import UtcDatetime, new_id, utcnow
from soudan_shared.store import IndexSpec

STAFF = "console_staff"
SESSIONS = "console_sessions"
NOTES = "console_notes"
EMERGENCIES = "console_emergencies"
CANNED = "console_canned"
SECURITY = "console_security"
SIGN_IN_SOURCES = "console_sign_in_sources"  # failed sign-ins per client address and window
BROADCASTS = "console_broadcasts"
BROADCAST_PREVIEWS = "console_broadcast_previews"

Role = Literal["counselor", "supervisor", "admin", "section"]
ROLES: Final[dict[str, str]] = {
    "counselor": "相談員",
    "supervisor": "スーパーバイザー",
    "admin": "管理者",
    "section": "生徒指導・学校安全課",
}
CASE_ROLES: Final = frozenset({"counselor", "supervisor", "admin"})
SUPERVISING_ROLES: Final = frozenset({"supervisor", "admin"})
REPORT_ROLES: Final = frozenset({"section", "admin"})

EMERGENCY_TYPES: Final[dict[str, str]] = {
    "suicide_notice": "自殺予告",
    "child_abuse": "児童虐待",
    "crime_victim": "犯罪被害",
    "other": "その他",
}
OUTCOMES: Final[dict[str, str]] = {
    "resolved": "話を聞き、助言して終了",
    "continuing": "見守り・また相談してくれるよう伝えた",
    "referred": "関係機関につないだ",
    "no_response": "返事がなくなった",
    "other": "その他",
}
CONTACT_RESULTS: Final[dict[str, str]] = {
    "referred": "つながった・対応を依頼した",
    "consulted": "つながった・相談した",
    "no_answer": "つながらなかった",
    "callback": "折り返しを待っている",
}
STAFF_STATUSES: Final[dict[str, str]] = {"available": "受付中", "away": "休憩中"}
AGENCY_KINDS: Final[dict[str, str]] = {
    "hotline": "相談ダイヤル",
    "police": "警察",
    "ambulance": "救急",
    "child_guidance_center": "児童相談所",
    "school": "学校",
    "education_bureau": "教育局",
    "section": "生徒指導・学校安全課",
    "medical": "医療機関",
    "other": "その他",
}


class Document(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    def to_document(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


class Staff(Document):
    id: str = Field(default_factory=new_id, alias="_id")
    email: str
    name: str
    role: Role
    password_hash: str
    password_changed_at: UtcDatetime
    password_history: list[str] = Field(default_factory=list)  # earlier hashes, newest first
    must_change_password: bool = False
    failed_logins: int = 0
    locked_until: UtcDatetime | None = None
    disabled: bool = False
    totp_secret: str | None = None
    totp_enabled: bool = False
    status: str = "available"
    created_at: UtcDatetime = Field(default_factory=utcnow)
    last_login_at: UtcDatetime | None = None


class Note(Document):
    id: str = Field(default_factory=new_id, alias="_id")
    case_id: str
    user_id: str
    staff_id: str
    text: str
    at: UtcDatetime = Field(default_factory=utcnow)


class Contact(BaseModel):
    id: str = Field(default_factory=new_id)
    agency: str
    result: str
    memo: str = ""
    staff_id: str
    contacted_at: UtcDatetime


class Emergency(Document):
    id: str = Field(default_factory=new_id, alias="_id")
    case_id: str
    user_id: str
    type: str
    raised_by: str
    raised_at: UtcDatetime = Field(default_factory=utcnow)
    state: Literal["open", "closed"] = "open"
    contacts: list[Contact] = Field(default_factory=list)
    #: the mail to EMERGENCY_RECIPIENTS (emergencies.AlarmMail): pending | sending | sent |
    #: failed | not_configured, its tries, the next one's time and the claim's
    email: str = "pending"
    email_detail: str = ""
    email_attempts: int = 0
    email_after: UtcDatetime | None = None
    email_claimed_at: UtcDatetime | None = None
    summary: str | None = None
    closed_by: str | None = None
    closed_at: UtcDatetime | None = None


class Canned(Document):
    id: str = Field(default_factory=new_id, alias="_id")
    title: str
    text: str
    order: int = 0


class Broadcast(Document):
    id: str = Field(default_factory=new_id, alias="_id")
    template: str
    texts: list[str]
    audience: Literal["registered", "target_group"]
    requested_by: str
    requested_at: UtcDatetime = Field(default_factory=utcnow)
    due_at: UtcDatetime
    state: Literal["scheduled", "requested", "started", "finished", "refused", "cancelled"] = (
        "scheduled"
    )
    planned: int | None = None
    recipients: int = 0
    failures: int = 0
    detail: str = ""
    texts_digest: str | None = None
    confirmed_recipients: int | None = None
    repeat_confirmed: bool = False
    budget_override: bool = False  # sent although it eats the reserve (a second confirmation)


REPLY_FORMS = "console_reply_forms"
# The month's LINE budget alerts already sent, one document per month and kind (``budget.py``)
BUDGET_ALERTS = "console_budget_alerts"

INDEXES = (
    IndexSpec(
        REPLY_FORMS, (("issued_at", 1),), name="issued", options={"expireAfterSeconds": 30 * 86400}
    ),
    IndexSpec(STAFF, (("email", 1),), unique=True, name="email"),
    IndexSpec(SESSIONS, (("expires_at", 1),), name="expiry"),
    IndexSpec(SESSIONS, (("staff_id", 1),), name="staff"),
    IndexSpec(NOTES, (("case_id", 1), ("at", 1)), name="case_notes"),
    IndexSpec(EMERGENCIES, (("case_id", 1),), name="case"),
    IndexSpec(EMERGENCIES, (("state", 1), ("raised_at", -1)), name="open"),
    IndexSpec(BROADCASTS, (("state", 1), ("due_at", 1)), name="due"),
    IndexSpec(BROADCASTS, (("texts_digest", 1), ("due_at", -1)), name="repeats"),
    IndexSpec(
        BROADCAST_PREVIEWS,
        (("expires_at", 1),),
        name="expiry",
        options={"expireAfterSeconds": 0},
    ),
    IndexSpec(
        SIGN_IN_SOURCES, (("expires_at", 1),), name="expiry", options={"expireAfterSeconds": 0}
    ),
)
