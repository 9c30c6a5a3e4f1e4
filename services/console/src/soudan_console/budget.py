"""The month's LINE messages for staff: the admins' mail at the thresholds, the alert when the
month is spent, and what a counselor can still do then.

Each alert goes once a month: :func:`once_this_month` inserts ``<month>:<what>`` into
:data:`~soudan_console.domain.BUDGET_ALERTS`, and only the console process whose insert wins
sends it (with several replicas too).

- **Thresholds** (every tick): when dispatch's last reading (:func:`~soudan_console.broadcasts.
  budget`) shows ``CONSOLE_BUDGET_WARN_PERCENT`` (80) or ``CONSOLE_BUDGET_ALERT_PERCENT`` (95)
  of the month used, the admins get a mail, once per threshold and month.
- **The month is spent** (LINE's 429 "monthly limit" on a push, seen as ``reply.failed`` with
  problem ``monthly_limit``): the supervisors and admins signed in are alerted live and all of
  them by mail, once a month. The reply that failed says why on the message, and the case page
  says what can still be done (:func:`month_spent`): a reply within a minute of the student's
  next message goes by its reply token, which the month's limit does not count, and the phone
  lines of ``agencies.yaml`` can be given to the student then.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from pymongo.errors import DuplicateKeyError
from soudan_shared.contracts import utcnow
from soudan_shared.records import StoredMessage

from soudan_console.broadcasts import Budget, budget
from soudan_console.cases import MONTHLY_LIMIT
from soudan_console.core import Console
from soudan_console.domain import BUDGET_ALERTS, STAFF, SUPERVISING_ROLES

log = structlog.get_logger(__name__)

TOKYO = ZoneInfo("Asia/Tokyo")

SPENT_SUBJECT = "【相談窓口】今月のLINEの通数がなくなりました"
SPENT_NOTICE = (
    "今月にLINEで送れるメッセージの数が上限に達しました。こちらから先に送るメッセージ"
    "（相談員の返信・一斉送信）は、来月まで届きません。相談者からメッセージが届いてから"
    "1分以内の返信は上限に数えられないので届きます。相談の画面に、できることを出しています。"
)


def month_of(at: datetime) -> str:
    """The month LINE counts in (Japan), ``YYYY-MM``."""
    return at.astimezone(TOKYO).strftime("%Y-%m")


async def once_this_month(console: Console, what: str, month: str) -> bool:
    """True for the first caller of ``what`` in ``month`` (across replicas), False after."""
    key = f"{month}:{what}"
    if await console.db[BUDGET_ALERTS].find_one({"_id": key}) is not None:
        return False
    try:
        await console.db[BUDGET_ALERTS].insert_one(
            {"_id": key, "month": month, "what": what, "at": utcnow()}
        )
    except DuplicateKeyError:
        return False
    return True


async def _emails(console: Console, roles: frozenset[str]) -> list[str]:
    docs = (
        await console.db[STAFF].find({"role": {"$in": sorted(roles)}, "disabled": False}).to_list()
    )
    return sorted({d["email"] for d in docs if d.get("email")})


async def _mail(console: Console, roles: frozenset[str], subject: str, body: str) -> None:
    recipients = await _emails(console, roles)
    if not recipients:
        return
    try:
        await console.mailer.send(recipients, subject, body)
    except Exception as exc:  # a notice that cannot go out is logged; the page still shows it
        log.warning("budget_mail_failed", subject=subject, error=type(exc).__name__)


def _thresholds(console: Console) -> list[float]:
    s = console.settings
    return sorted({s.console_budget_warn_percent, s.console_budget_alert_percent})


async def check_thresholds(console: Console) -> list[float]:
    """Mail the admins for each threshold the month's use has crossed and that was not mailed
    this month yet; the thresholds mailed now."""
    current = await budget(console)
    if current is None or not current.limit or not console.mailer.configured:
        return []
    month = month_of(current.read_at or utcnow())
    share = current.used * 100 / current.limit
    mailed = []
    for percent in _thresholds(console):
        if share >= percent and await once_this_month(console, f"used-{percent:g}", month):
            await _mail(console, frozenset({"admin"}), *_threshold_mail(console, current, percent))
            mailed.append(percent)
    return mailed


def _threshold_mail(console: Console, current: Budget, percent: float) -> tuple[str, str]:
    base = console.settings.console_base_url.rstrip("/")
    subject = f"【相談窓口】今月のLINEの通数を{percent:g}%使いました"
    body = (
        f"今月にLINEで送れるメッセージ {current.limit}通のうち、{current.used}通を使いました"
        f"（{current.percent}%）。残りは {current.remaining}通です。\n"
        f"相談員の返信や急ぎの自動返信のために {current.reserve}通を残しています。"
        "一斉送信は必要なものだけにしてください。\n\n"
        f"コンソールの一斉送信の画面で、いまの残りを確かめられます: {base}/admin/broadcasts\n"
    )
    return subject, body


async def on_reply_failed(console: Console, data: dict[str, Any], at: datetime) -> bool:
    """A send LINE refused: the first one this month refused for the monthly limit alerts the
    supervisors and admins (live and by mail). True if this call alerted."""
    if data.get("problem") != MONTHLY_LIMIT:
        return False
    if not await once_this_month(console, MONTHLY_LIMIT, month_of(at)):
        return False
    log.warning("line_monthly_limit_reached")
    console.hub.send(
        "notice", {"type": "line.monthly_limit", "text": SPENT_NOTICE}, roles=SUPERVISING_ROLES
    )
    if console.mailer.configured:
        await _mail(
            console, SUPERVISING_ROLES, "【相談窓口】今月のLINEの通数がなくなりました", SPENT_NOTICE
        )
    return True


async def month_spent(console: Console, messages: list[StoredMessage]) -> bool:
    """Whether the case page should say what can still be done: one of its messages was refused
    for the monthly limit this month, or dispatch's last reading shows nothing left."""
    month = month_of(utcnow())
    for m in messages:
        refused = m.delivery == "failed" and m.delivery_problem == MONTHLY_LIMIT
        if refused and (m.delivery_at is None or month_of(m.delivery_at) == month):
            return True
    current = await budget(console)
    return (
        current is not None
        and current.remaining == 0
        and month_of(current.read_at or utcnow()) == month
    )
