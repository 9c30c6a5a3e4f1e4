"""Counselors' and supervisors' pages: queue, conversation, emergencies, the live stream."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from soudan_shared.contracts import utcnow
from soudan_shared.records import Case

from soudan_console import cases as case_ops
from soudan_console import emergencies as emergency_ops
from soudan_console import live
from soudan_console import staff as accounts
from soudan_console.domain import (
    AGENCY_KINDS,
    CASE_ROLES,
    CONTACT_RESULTS,
    EMERGENCY_TYPES,
    OUTCOMES,
    STAFF_STATUSES,
    SUPERVISING_ROLES,
    Emergency,
    Staff,
)
from soudan_console.web import (
    TOKYO,
    access,
    current_session,
    current_staff,
    error_page,
    forbidden,
    get_console,
    not_found,
    render,
    see_other,
)

routes = web.RouteTableDef()
_background: set[asyncio.Task[None]] = set()


def _keep(task: asyncio.Task[None]) -> None:
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _labels(request: web.Request) -> dict[str, Any]:
    config = await get_console(request).config.get()
    return {
        "school_types": {c.key: c.label for c in config.messages.school_type.choices},
        "categories": {c.key: c.label for c in config.categories.categories},
        "keywords": list(config.keywords.active),
        "outcomes": OUTCOMES,
        "emergency_types": EMERGENCY_TYPES,
        "contact_results": CONTACT_RESULTS,
        "statuses": STAFF_STATUSES,
        "agency_kinds": AGENCY_KINDS,
    }


async def _queue_context(request: web.Request) -> dict[str, Any]:
    console = get_console(request)
    staff = current_staff(request)
    rows = await case_ops.waiting_queue(console)
    mine = await case_ops.cases_of(console, staff.id)
    return {
        "rows": rows,
        "mine": mine,
        "now": utcnow(),
        "urgent_count": sum(1 for r in rows if r.case.urgent),
        **(await _labels(request)),
    }


@routes.get("/queue")
@access(*CASE_ROLES)
async def queue(request: web.Request) -> web.StreamResponse:
    return render(request, "queue.html", await _queue_context(request))


@routes.get("/queue/fragment")
@access(*CASE_ROLES)
async def queue_fragment(request: web.Request) -> web.StreamResponse:
    return render(request, "queue_fragment.html", await _queue_context(request))


@routes.post("/queue/next")
@access(*CASE_ROLES)
async def claim_next(request: web.Request) -> web.StreamResponse:
    case = await case_ops.claim_next(get_console(request), current_staff(request))
    if case is None:
        raise see_other("/queue", msg="empty")
    raise see_other(f"/cases/{case.id}", msg="claimed")


async def _case(request: web.Request) -> Case:
    case = await case_ops.get_case(get_console(request), request.match_info["case_id"][:64])
    if case is None:
        raise not_found(request)
    if not case_ops.may_see(current_staff(request), case):
        raise forbidden(request)
    return case


@routes.post("/cases/{case_id}/claim")
@access(*CASE_ROLES)
async def claim(request: web.Request) -> web.StreamResponse:
    case_id = request.match_info["case_id"][:64]
    case = await case_ops.claim(get_console(request), case_id, current_staff(request))
    if case is None:
        raise see_other("/queue", msg="taken")
    raise see_other(f"/cases/{case.id}", msg="claimed")


async def _conversation_context(request: web.Request, case: Case) -> dict[str, Any]:
    console = get_console(request)
    staff = current_staff(request)
    convo = await case_ops.conversation(console, case)
    names = await accounts.staff_names(console)
    colleagues = [
        s
        for s in await accounts.all_staff(console)
        if not s.disabled and s.role in ("counselor", "supervisor") and s.id != case.claimed_by
    ]
    canned = await console.db["console_canned"].find({}).sort("order", 1).to_list()
    return {
        "c": convo,
        "case": case,
        "names": names,
        "colleagues": colleagues,
        "canned": canned,
        "may_work": case_ops.may_work(staff, case),
        "now": utcnow(),
        "command_id": case_ops.new_command_id(),
        **(await _labels(request)),
    }


@routes.get("/cases/{case_id}")
@access(*CASE_ROLES)
async def case_page(request: web.Request) -> web.StreamResponse:
    case = await _case(request)
    await case_ops.view(get_console(request), case, current_staff(request))
    return render(request, "case.html", await _conversation_context(request, case))


@routes.get("/cases/{case_id}/fragment")
@access(*CASE_ROLES)
async def case_fragment(request: web.Request) -> web.StreamResponse:
    case = await _case(request)
    return render(request, "case_messages.html", await _conversation_context(request, case))


async def _working_case(request: web.Request) -> Case:
    case = await _case(request)
    if not case_ops.may_work(current_staff(request), case):
        raise error_page(
            request,
            409,
            "この相談はいま操作できません",
            "担当が変わったか、すでに終わった相談です。待ち行列にもどってください。",
        )
    return case


async def _error_on_case(request: web.Request, case: Case, error: str, **keep: Any) -> web.Response:
    ctx = await _conversation_context(request, case)
    return render(request, "case.html", {**ctx, "error": error, **keep}, status=400)


@routes.post("/cases/{case_id}/reply")
@access(*CASE_ROLES)
async def reply(request: web.Request) -> web.StreamResponse:
    case = await _working_case(request)
    form = await request.post()
    texts = [str(v)[:6000] for v in form.getall("text", [])][:10]
    command_id = str(form.get("command_id", ""))[:64] or case_ops.new_command_id()
    try:
        await case_ops.reply(get_console(request), case, current_staff(request), texts, command_id)
    except case_ops.CaseError as exc:
        return await _error_on_case(request, case, str(exc), drafts=texts, command_id=command_id)
    raise see_other(f"/cases/{case.id}", msg="sent")


@routes.post("/cases/{case_id}/notes")
@access(*CASE_ROLES)
async def note(request: web.Request) -> web.StreamResponse:
    case = await _case(request)
    staff = current_staff(request)
    if case.state == "closed" and staff.role not in SUPERVISING_ROLES:
        raise forbidden(request)
    if case.state == "active" and not case_ops.may_work(staff, case):
        raise forbidden(request)
    form = await request.post()
    text = str(form.get("note", ""))[:5000]
    try:
        await case_ops.add_note(get_console(request), case, staff, text)
    except case_ops.CaseError as exc:
        return await _error_on_case(request, case, str(exc), note_draft=text)
    raise see_other(f"/cases/{case.id}", msg="noted")


@routes.post("/cases/{case_id}/release")
@access(*CASE_ROLES)
async def release(request: web.Request) -> web.StreamResponse:
    case = await _working_case(request)
    if not await case_ops.release(get_console(request), case, current_staff(request)):
        raise see_other(f"/cases/{case.id}", msg="gone")
    raise see_other("/queue", msg="released")


@routes.post("/cases/{case_id}/transfer")
@access(*CASE_ROLES)
async def transfer(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    case = await _working_case(request)
    form = await request.post()
    to = await accounts.get_staff(console, str(form.get("to", ""))[:64])
    if to is None:
        return await _error_on_case(request, case, "引き継ぐ相手を選んでください。")
    try:
        moved = await case_ops.transfer(console, case, to, current_staff(request))
    except case_ops.CaseError as exc:
        return await _error_on_case(request, case, str(exc))
    if not moved:
        raise see_other(f"/cases/{case.id}", msg="gone")
    back = str(form.get("back", ""))
    raise see_other("/supervise" if back == "supervise" else "/queue", msg="transferred")


@routes.post("/cases/{case_id}/close")
@access(*CASE_ROLES)
async def close(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    case = await _working_case(request)
    form = await request.post()
    category = str(form.get("category", ""))
    outcome = str(form.get("outcome", ""))
    labels = await _labels(request)
    if category not in labels["categories"] or outcome not in OUTCOMES:
        return await _error_on_case(request, case, "分類と結果を選んでから終了してください。")
    if not await case_ops.close(
        console, case, current_staff(request), category=category, outcome=outcome
    ):
        raise see_other(f"/cases/{case.id}", msg="gone")
    raise see_other("/queue", msg="closed")


# -- emergencies ----------------------------------------------------------------------------


@routes.post("/cases/{case_id}/emergency")
@access(*CASE_ROLES)
async def raise_emergency(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    case = await _case(request)
    staff = current_staff(request)
    if case.state == "waiting":
        claimed = await case_ops.claim(console, case.id, staff)
        if claimed is None:
            raise see_other("/queue", msg="taken")
        case = claimed
    if not case_ops.may_work(staff, case):
        raise forbidden(request)
    form = await request.post()
    try:
        emergency, task = await emergency_ops.raise_emergency(
            console, case, staff, str(form.get("type", ""))
        )
    except emergency_ops.EmergencyError as exc:
        return await _error_on_case(request, case, str(exc))
    _keep(task)
    raise see_other(f"/emergencies/{emergency.id}")


async def _emergency(request: web.Request) -> tuple[Emergency, Case]:
    console = get_console(request)
    staff = current_staff(request)
    emergency = await emergency_ops.get(console, request.match_info["emergency_id"][:64])
    if emergency is None:
        raise not_found(request)
    case = await case_ops.get_case(console, emergency.case_id)
    if case is None:
        raise not_found(request)
    if not (
        staff.role in SUPERVISING_ROLES
        or emergency.raised_by == staff.id
        or case.claimed_by == staff.id
    ):
        raise forbidden(request)
    return emergency, case


async def _emergency_context(
    request: web.Request, emergency: Emergency, case: Case
) -> dict[str, Any]:
    console = get_console(request)
    config = await console.config.get()
    return {
        "e": emergency,
        "case": case,
        "names": await accounts.staff_names(console),
        "hotlines": config.agencies.hotlines,
        "contacts": config.agencies.contacts,
        "now_local": utcnow().astimezone(TOKYO).strftime("%Y-%m-%dT%H:%M"),
        **(await _labels(request)),
    }


@routes.get("/emergencies/{emergency_id}")
@access(*CASE_ROLES)
async def emergency_page(request: web.Request) -> web.StreamResponse:
    emergency, case = await _emergency(request)
    return render(request, "emergency.html", await _emergency_context(request, emergency, case))


def _local_time(value: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.strptime(value[:16], "%Y-%m-%dT%H:%M")
    except ValueError:
        return None
    return parsed.replace(tzinfo=TOKYO)


@routes.post("/emergencies/{emergency_id}/contacts")
@access(*CASE_ROLES)
async def emergency_contact(request: web.Request) -> web.StreamResponse:
    emergency, case = await _emergency(request)
    form = await request.post()
    agency = str(form.get("agency", ""))
    if agency == "__other__":
        agency = str(form.get("agency_other", ""))
    try:
        await emergency_ops.record_contact(
            get_console(request),
            emergency,
            current_staff(request),
            agency=agency[:200],
            result=str(form.get("result", "")),
            memo=str(form.get("memo", ""))[:2000],
            contacted_at=_local_time(str(form.get("contacted_at", ""))),
        )
    except emergency_ops.EmergencyError as exc:
        ctx = await _emergency_context(request, emergency, case)
        return render(request, "emergency.html", {**ctx, "error": str(exc)}, status=400)
    raise see_other(f"/emergencies/{emergency.id}", msg="contact_recorded")


@routes.post("/emergencies/{emergency_id}/close")
@access(*CASE_ROLES)
async def emergency_close(request: web.Request) -> web.StreamResponse:
    emergency, case = await _emergency(request)
    form = await request.post()
    summary = str(form.get("summary", ""))[:5000]
    try:
        await emergency_ops.close_emergency(
            get_console(request), emergency, current_staff(request), summary
        )
    except emergency_ops.EmergencyError as exc:
        ctx = await _emergency_context(request, emergency, case)
        return render(
            request, "emergency.html", {**ctx, "error": str(exc), "summary": summary}, status=400
        )
    raise see_other(f"/emergencies/{emergency.id}", msg="emergency_closed")


@routes.get("/emergencies")
@access(*SUPERVISING_ROLES)
async def emergency_list(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    return render(
        request,
        "emergencies.html",
        {
            "items": await emergency_ops.recent(console),
            "names": await accounts.staff_names(console),
            **(await _labels(request)),
        },
    )


# -- supervisors ----------------------------------------------------------------------------


async def _board_context(request: web.Request) -> dict[str, Any]:
    console = get_console(request)
    active = await case_ops.active_cases(console)
    staff_list = await accounts.all_staff(console)
    online = await console.sessions.online_staff()
    load: dict[str, int] = {}
    for case in active:
        if case.claimed_by:
            load[case.claimed_by] = load.get(case.claimed_by, 0) + 1
    limit = timedelta(minutes=console.settings.console_urgent_alert_minutes)
    overdue = await case_ops.urgent_unclaimed(console, utcnow() - limit)
    counselors = [s for s in staff_list if s.role in ("counselor", "supervisor") and not s.disabled]
    return {
        "active": active,
        "counselors": counselors,
        "online": online,
        "load": load,
        "overdue": overdue,
        "alert_minutes": console.settings.console_urgent_alert_minutes,
        "waiting": await console.db["cases"].count_documents({"state": "waiting"}),
        "open_emergencies": await emergency_ops.open_emergencies(console),
        "names": {s.id: s.name for s in staff_list},
        "now": utcnow(),
        **(await _labels(request)),
    }


@routes.get("/supervise")
@access(*SUPERVISING_ROLES)
async def supervise(request: web.Request) -> web.StreamResponse:
    return render(request, "supervise.html", await _board_context(request))


@routes.get("/supervise/fragment")
@access(*SUPERVISING_ROLES)
async def supervise_fragment(request: web.Request) -> web.StreamResponse:
    return render(request, "supervise_fragment.html", await _board_context(request))


# -- the live stream ------------------------------------------------------------------------


@routes.get("/events")
@access(*CASE_ROLES)
async def events(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    staff: Staff = current_staff(request)
    session = current_session(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    client = console.hub.connect(staff.id, staff.role)

    async def still_valid() -> bool:
        token = session.token if session else None
        return await console.sessions.load(token) is not None

    try:
        await response.prepare(request)
        await live.stream(client, response.write, still_valid=still_valid)
    except ConnectionResetError:
        pass
    finally:
        console.hub.disconnect(client)
    return response
