"""The student's chat while a counselor works: 既読 once they read, "入力中…" while they write.

既読 (read receipts)
    :func:`mark_seen` asks dispatch (``MarkRead``) to mark the case's newest message not yet read,
    with the token triage kept for it; LINE then shows 既読 on it and on every earlier one. It
    runs when a case page is opened (``views_cases.case_page``) and on ``POST
    /cases/{id}/seen``, which the open page (``static/typing.js``) calls when a new message of
    the student appears on it while the page is in view (or once it comes back into view): read
    only when it was actually shown. Anyone who may see the case marks it read by seeing it;
    nothing automatic ever does. A mark the bus cannot take now is let go: the next look sends
    it (a lost read mark is harmless).

入力中… (the typing indicator)
    ``POST /cases/{id}/typing``: the page calls it while keys are pressed in the reply box, at
    most every few seconds (``typing.js``); only whoever may reply (the same check as the reply
    itself) and with the session's CSRF token, like every form. Each call asks dispatch
    (``StartLoading``) to show LINE's loading animation for :data:`LOADING_SECONDS`, at most once
    per :data:`TYPING_MIN_INTERVAL` per student across console processes (the store's
    ``console_typing``): so the animation goes on while the counselor keeps typing and ends at
    most that long after the last key. Opening or reading the conversation sends none.
"""

from __future__ import annotations

from datetime import timedelta

import structlog
from aiohttp import web
from pymongo.errors import DuplicateKeyError
from soudan_shared.bus import PublishFailed
from soudan_shared.contracts import MarkRead, StartLoading, mark_read_id, utcnow
from soudan_shared.records import Case, newest_unread

from soudan_console import cases as case_ops
from soudan_console.core import Console
from soudan_console.domain import CASE_ROLES, Staff
from soudan_console.web import access, current_staff, forbidden, get_console, not_found

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

TYPING = "console_typing"  # {_id: LINE user id, at}: the last loading asked for that student
LOADING_SECONDS = 10
TYPING_MIN_INTERVAL = timedelta(seconds=4)
PUBLISH_TIMEOUT = 2.0  # a page view never waits long on the bus for a read mark


async def mark_seen(console: Console, case: Case, staff: Staff) -> bool:
    """Ask dispatch to mark the case's newest unread message read; False if none is unread (or
    the bus did not take the mark now)."""
    newest = await newest_unread(console.db, case.id)
    if newest is None:
        return False
    message_id, user_id, token = newest
    command = MarkRead(
        id=mark_read_id(message_id),
        user_id=user_id,
        message_id=message_id,
        token=token,
        case_id=case.id,
        staff_id=staff.id,
    )
    try:
        await console.bus.publish(command, timeout=PUBLISH_TIMEOUT)
    except PublishFailed as exc:
        log.warning("mark_read_not_published", case_id=case.id, error=str(exc)[:200])
        return False
    return True


async def _due(console: Console, user_id: str) -> bool:
    """Take the student's turn for a loading animation: False while the last one is younger
    than :data:`TYPING_MIN_INTERVAL` (one write on the unique ``_id``, so two processes asked at
    once send one)."""
    now = utcnow()
    try:
        await console.db[TYPING].update_one(
            {"_id": user_id, "at": {"$lte": now - TYPING_MIN_INTERVAL}},
            {"$set": {"at": now}},
            upsert=True,
        )
    except DuplicateKeyError:
        return False
    return True


async def visible_case(request: web.Request) -> Case:
    """The case of the URL, if the staff member may see it (404 / 403 otherwise)."""
    case = await case_ops.get_case(get_console(request), request.match_info["case_id"][:64])
    if case is None:
        raise not_found(request)
    if not case_ops.may_see(current_staff(request), case):
        raise forbidden(request)
    return case


@routes.post("/cases/{case_id}/seen")
@access(*CASE_ROLES)
async def seen(request: web.Request) -> web.StreamResponse:
    """The open page shows a new message of the student: 既読."""
    case = await visible_case(request)
    marked = await mark_seen(get_console(request), case, current_staff(request))
    return web.json_response({"marked": marked})


@routes.post("/cases/{case_id}/typing")
@access(*CASE_ROLES)
async def typing(request: web.Request) -> web.StreamResponse:
    """The counselor is writing a reply: "入力中…" in the student's chat."""
    console = get_console(request)
    staff = current_staff(request)
    case = await visible_case(request)
    if not case_ops.may_work(staff, case):
        return web.json_response({"started": False, "reason": "not_yours"}, status=409)
    if not await _due(console, case.user_id):
        return web.json_response({"started": False, "reason": "recent"})
    command = StartLoading(
        user_id=case.user_id, seconds=LOADING_SECONDS, case_id=case.id, staff_id=staff.id
    )
    try:
        await console.bus.publish(command, timeout=PUBLISH_TIMEOUT)
    except PublishFailed:
        return web.json_response({"started": False, "reason": "unavailable"}, status=503)
    return web.json_response({"started": True})
