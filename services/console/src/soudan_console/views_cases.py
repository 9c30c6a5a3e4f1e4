"""Counselors' and supervisors' pages: queue, conversation, emergencies, the live stream."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from soudan_shared.config import UNKNOWN_LABEL, Agency
from soudan_shared.contracts import utcnow
from soudan_shared.records import Case

from soudan_console import budget
from soudan_console import cases as case_ops
from soudan_console import emergencies as emergency_ops
from soudan_console import staff as accounts
from soudan_console.domain import (
    AGENCY_KINDS,
    CASE_ROLES,
    CONTACT_RESULTS,
    EMERGENCY_TYPES,
    OUTCOMES,
    REPLY_FORMS,
    STAFF_STATUSES,
    SUPERVISING_ROLES,
    Emergency,
)
from soudan_console.views_typing import mark_seen, visible_case
from soudan_console.web import (
    TOKYO,
    access,
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
        "grades": {c.key: c.label for c in config.categories.grades},
        "genders": {c.key: c.label for c in config.categories.genders},
        "unknown_label": UNKNOWN_LABEL,
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


@routes.post("/cases/{case_id}/claim")
@access(*CASE_ROLES)
async def claim(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    staff = current_staff(request)
    case = await case_ops.get_case(console, request.match_info["case_id"][:64])
    if case is None:
        raise not_found(request)
    if not case_ops.may_claim(staff, case):
        # Someone was quicker (the usual reason), or the case is over.
        raise see_other("/queue", msg="taken" if case.state == "active" else "gone")
    claimed = await case_ops.claim(console, case.id, staff)
    if claimed is None:
        raise see_other("/queue", msg="taken")
    raise see_other(f"/cases/{claimed.id}", msg="claimed")


async def _conversation_context(
    request: web.Request, case: Case, *, with_form: bool = False
) -> dict[str, Any]:
    """What the conversation shows; ``with_form``: a fresh reply form id (bound to this case
    and staff member) for the page's reply box."""
    console = get_console(request)
    staff = current_staff(request)
    convo = await case_ops.conversation(console, case)
    names = await accounts.staff_names(console)
    colleagues = case_ops.transfer_targets(await accounts.all_staff(console), case)
    canned = await console.db["console_canned"].find({}).sort("order", 1).to_list()
    can = case_ops.allowed_actions(staff, case)
    may_work = case_ops.may_work(staff, case)
    form_id = None
    if with_form and can["reply"]:
        form_id = await case_ops.issue_reply_form(console, case, staff)
    labels = await _labels(request)
    spent = await budget.month_spent(console, convo.messages)
    phone_lines: list[Agency] = []
    if spent:  # the numbers a student may be given (not the placeholders still to replace)
        hotlines = (await console.config.get()).agencies.hotlines
        phone_lines = [h for h in hotlines if h.kind == "hotline" and not h.example]
    return {
        "month_spent": spent,
        "phone_lines": phone_lines,
        "c": convo,
        "case": case,
        "names": names,
        "colleagues": colleagues,
        "canned": canned,
        "can": can,
        "may_work": may_work,
        "may_note": can["notes"],
        "may_retry": lambda message: case_ops.may_retry(staff, case, message),
        "now": utcnow(),
        "command_id": form_id,
        "auto_labels": case_ops.AUTO_REPLY_LABELS,
        "delivery_problem": case_ops.delivery_problem,
        **labels,
        # the student's messages show this case's risk phrases marked like the keywords
        "phrases": case.highlights,
    }


@routes.get("/cases/{case_id}")
@access(*CASE_ROLES)
async def case_page(request: web.Request) -> web.StreamResponse:
    case = await visible_case(request)
    await case_ops.view(get_console(request), case, current_staff(request))
    await mark_seen(get_console(request), case, current_staff(request))  # 既読
    return render(request, "case.html", await _conversation_context(request, case, with_form=True))


@routes.get("/cases/{case_id}/fragment")
@access(*CASE_ROLES)
async def case_fragment(request: web.Request) -> web.StreamResponse:
    case = await visible_case(request)
    return render(request, "case_messages.html", await _conversation_context(request, case))


async def _case_for(request: web.Request, action: str) -> Case:
    """The case of ``POST /cases/<id>/<action>``, if the action's rule (the one the case page
    offers its form by, :data:`case_ops.CASE_ACTIONS`) lets this staff member take it now."""
    case = await visible_case(request)
    if not case_ops.CASE_ACTIONS[action](current_staff(request), case):
        raise error_page(
            request,
            403,
            "この相談では、いまこの操作はできません",
            "担当が変わったか、まだだれも受けていないか、すでに終わった相談です。"
            "相談の画面を開き直すと、いまできることが出ます。",
        )
    return case


async def _error_on_case(
    request: web.Request, case: Case, error: str, *, status: int = 400, **keep: Any
) -> web.Response:
    ctx = await _conversation_context(request, case, with_form="command_id" not in keep)
    return render(request, "case.html", {**ctx, "error": error, **keep}, status=status)


@routes.post("/cases/{case_id}/reply")
@access(*CASE_ROLES)
async def reply(request: web.Request) -> web.StreamResponse:
    case = await _case_for(request, "reply")
    form = await request.post()
    texts = [str(v)[:6000] for v in form.getall("text", [])][:10]
    form_id = str(form.get("command_id", ""))[:64]
    try:
        await case_ops.reply(get_console(request), case, current_staff(request), texts, form_id)
    except case_ops.ReplyFormRefused as exc:
        # A fresh form for this case: sending it is the counselor's own, deliberate choice.
        return await _error_on_case(request, case, str(exc), status=exc.status, drafts=texts)
    except case_ops.CaseError as exc:
        keep: dict[str, Any] = {"drafts": texts}
        if await get_console(request).db[REPLY_FORMS].find_one({"_id": form_id}):
            keep["command_id"] = form_id  # the same send when it is tried again
        return await _error_on_case(request, case, str(exc), status=exc.status, **keep)
    raise see_other(f"/cases/{case.id}", msg="sending")


@routes.post("/cases/{case_id}/replies/{command_id}/retry")
@access(*CASE_ROLES)
async def retry_reply(request: web.Request) -> web.StreamResponse:
    case = await _case_for(request, "reply")
    command_id = request.match_info["command_id"][:64]
    try:
        again = await case_ops.retry_reply(
            get_console(request), case, current_staff(request), command_id
        )
    except case_ops.CaseError as exc:
        return await _error_on_case(request, case, str(exc), status=exc.status)
    raise see_other(f"/cases/{case.id}", msg="retried" if again else "retry_nothing")


@routes.post("/cases/{case_id}/notes")
@access(*CASE_ROLES)
async def note(request: web.Request) -> web.StreamResponse:
    case = await _case_for(request, "notes")
    staff = current_staff(request)
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
    case = await _case_for(request, "release")
    if not await case_ops.release(get_console(request), case, current_staff(request)):
        raise see_other(f"/cases/{case.id}", msg="gone")
    raise see_other("/queue", msg="released")


@routes.post("/cases/{case_id}/transfer")
@access(*CASE_ROLES)
async def transfer(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    case = await _case_for(request, "transfer")
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
    case = await _case_for(request, "close")
    form = await request.post()
    draft: dict[str, Any] = {
        "categories": [str(v)[:64] for v in form.getall("categories", [])][:50],
        "outcome": str(form.get("outcome", ""))[:64],
        "grade": str(form.get("grade", ""))[:64],
        "gender": str(form.get("gender", ""))[:64],
        "handed_over": bool(form.get("handed_over")),
    }
    try:
        record = case_ops.close_record((await console.config.get()).categories, **draft)
    except case_ops.CaseError as exc:  # the choices stay on the form, to correct
        return await _error_on_case(request, case, str(exc), status=exc.status, close_draft=draft)
    if not await case_ops.close(console, case, current_staff(request), record):
        raise see_other(f"/cases/{case.id}", msg="gone")
    raise see_other("/queue", msg="closed")


# -- emergencies ----------------------------------------------------------------------------


@routes.post("/cases/{case_id}/emergency")
@access(*CASE_ROLES)
async def raise_emergency(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    case = await _case_for(request, "emergency")
    staff = current_staff(request)
    if case_ops.may_claim(staff, case):
        claimed = await case_ops.claim(console, case.id, staff)
        if claimed is None:
            raise see_other("/queue", msg="taken")
        case = claimed
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
    if not emergency_ops.may_see(staff, emergency, case):
        raise forbidden(request)
    return emergency, case


async def _open_emergency(request: web.Request) -> tuple[Emergency, Case]:
    """The emergency of a recording action (contact, close): refused once it is over."""
    emergency, case = await _emergency(request)
    if not emergency_ops.may_record(current_staff(request), emergency, case):
        raise error_page(request, 409, "この緊急対応は終わっています", emergency_ops.ALREADY_CLOSED)
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
        "may_record": emergency_ops.may_record(current_staff(request), emergency, case),
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
    emergency, case = await _open_emergency(request)
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
        return render(request, "emergency.html", {**ctx, "error": str(exc)}, status=exc.status)
    raise see_other(f"/emergencies/{emergency.id}", msg="contact_recorded")


@routes.post("/emergencies/{emergency_id}/close")
@access(*CASE_ROLES)
async def emergency_close(request: web.Request) -> web.StreamResponse:
    emergency, case = await _open_emergency(request)
    form = await request.post()
    summary = str(form.get("summary", ""))[:5000]
    try:
        await emergency_ops.close_emergency(
            get_console(request), emergency, current_staff(request), summary
        )
    except emergency_ops.EmergencyError as exc:
        ctx = await _emergency_context(request, emergency, case)
        return render(
            request,
            "emergency.html",
            {**ctx, "error": str(exc), "summary": summary},
            status=exc.status,
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
    failed_limit = timedelta(minutes=console.settings.console_failed_reply_alert_minutes)
    failed = await case_ops.failed_replies(console, utcnow() - failed_limit)
    counselors = [s for s in staff_list if s.role in ("counselor", "supervisor") and not s.disabled]

    def targets(case: Case) -> list[Any]:  # who the case may be handed to (as the handler says)
        return case_ops.transfer_targets(counselors, case)

    return {
        "active": active,
        "counselors": counselors,
        "transfer_targets": targets,
        "online": online,
        "load": load,
        "overdue": overdue,
        "alert_minutes": console.settings.console_urgent_alert_minutes,
        "failed_replies": failed,
        "failed_minutes": console.settings.console_failed_reply_alert_minutes,
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
