"""Admins' pages (staff, security, the section's settings, canned responses, broadcasts) and the
section's report downloads."""

from __future__ import annotations

import re
import secrets
from datetime import date, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from soudan_shared import fact_types as F
from soudan_shared.config import (
    ConfigError,
    HoursConfig,
)
from soudan_shared.config_store import (
    delete_override,
    parse_section,
    parse_section_yaml,
    save_override,
    section_yaml,
    stored_sections,
)
from soudan_shared.contracts import new_id, utcnow

from soudan_console import broadcasts as broadcast_ops
from soudan_console import staff as accounts
from soudan_console.domain import CANNED, REPORT_ROLES, ROLES, Canned, Staff
from soudan_console.hours_form import HoursForm, HoursFormError, hours_preview
from soudan_console.messages_form import (
    MESSAGES_NOT_SAVED,
    MessagesFormError,
    message_inputs,
    messages_from_form,
)
from soudan_console.web import (
    TOKYO,
    access,
    client_source,
    current_staff,
    get_console,
    not_found,
    render,
    see_other,
)

routes = web.RouteTableDef()

SECTION_TITLES = {
    "hours": "相談の期間と受付時間・休みの日",
    "messages": "自動で送るメッセージ",
    "keywords": "緊急キーワード",
    "categories": "相談の分類",
    "agencies": "緊急時の連絡先",
    "congestion": "混雑の判定",
}
YAML_SECTIONS = ("categories", "agencies", "congestion")
REPORT_NAME = re.compile(r"^soudan-report-(\d{4})-(\d{2})\.(xlsx|pdf)$")


@routes.get("/admin")
@access("admin")
async def admin_home(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    stored = await stored_sections(console.db)
    return render(request, "admin.html", {"sections": SECTION_TITLES, "stored": stored})


# -- staff --------------------------------------------------------------------------------------


@routes.get("/admin/staff")
@access("admin")
async def staff_list(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    return render(
        request,
        "admin_staff.html",
        {
            "people": await accounts.all_staff(console),
            "required": await accounts.totp_required_roles(console),
            "suggested": _suggest_password(),
            "min_length": console.settings.console_password_min_length,
        },
    )


def _suggest_password() -> str:
    return "-".join(secrets.token_urlsafe(4) for _ in range(4))


@routes.post("/admin/staff")
@access("admin")
async def staff_create(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    me = current_staff(request)
    form = await request.post()
    role = str(form.get("role", ""))
    if role not in ROLES:
        role = "counselor"
    try:
        await _reauthenticated(request, me, form)
        await accounts.create_staff(
            console,
            email=str(form.get("email", ""))[:200],
            name=str(form.get("name", ""))[:100],
            role=role,
            password=str(form.get("password", ""))[:300],
            by=me.id,
        )
    except accounts.StaffError as exc:
        return await _staff_page(
            request,
            str(exc),
            form={k: str(v) for k, v in form.items() if k not in ("password", *REAUTH_FIELDS)},
        )
    raise see_other("/admin/staff", msg="staff_created")


async def _staff_page(
    request: web.Request, error: str, form: dict[str, str] | None = None
) -> web.StreamResponse:
    """The staff page again, refusing with ``error`` (nothing was changed)."""
    console = get_console(request)
    return render(
        request,
        "admin_staff.html",
        {
            "people": await accounts.all_staff(console),
            "required": await accounts.totp_required_roles(console),
            "suggested": _suggest_password(),
            "min_length": console.settings.console_password_min_length,
            "error": error,
            "form": form,
        },
        status=400,
    )


# What an admin's session alone (a borrowed computer, a stolen cookie) must not be enough for:
# resetting another person's password or second factor (taking the account over), changing
# anyone's role (making someone admin, or demoting the admins), turning an account off or on
# again (locking staff out, or bringing an old account back), and creating an account (a lasting
# way in: every role but the section's reads students' conversations or runs the console). Each
# asks the admin's own password, and their current code when they have a second factor.
REAUTHENTICATED_ACTIONS = frozenset(
    {"role", "disable", "enable", "reset-password", "reset-second-factor"}
)
REAUTH_FIELDS = ("current", "current_code")
STAFF_ACTIONS = REAUTHENTICATED_ACTIONS | {"unlock"}


async def _reauthenticated(request: web.Request, me: Staff, form: Any) -> None:
    """Refuse (:class:`accounts.StaffError`) unless the form carries the admin's own current
    password and code; failures count toward the same throttles as failed sign-ins."""
    refused = await accounts.reauthenticate(
        get_console(request),
        me,
        str(form.get("current", ""))[:1000],
        str(form.get("current_code", ""))[:20],
        client_source(request),
        accounts.device_tokens(request.cookies.get(accounts.DEVICE_COOKIE)),
    )
    if refused:
        raise accounts.StaffError(refused)


@routes.post("/admin/staff/{staff_id}/{action}")
@access("admin")
async def staff_action(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    me = current_staff(request)
    target = await accounts.get_staff(console, request.match_info["staff_id"][:64])
    action = request.match_info["action"]
    if target is None or action not in STAFF_ACTIONS:
        raise not_found(request)
    form = await request.post()
    role = str(form.get("role", ""))
    try:
        # What is refused anyway is refused first, so no code is used up on it.
        if action == "role" and role not in ROLES:
            raise accounts.StaffError("役割を選んでください。")
        if action == "disable" and target.id == me.id:
            raise accounts.StaffError("自分のアカウントは使えなくできません。")
        if action.startswith("reset-") and target.id == me.id:
            # One's own are changed on one's own pages.
            raise accounts.StaffError(accounts.OWN_CREDENTIALS)
        if action in REAUTHENTICATED_ACTIONS:
            await _reauthenticated(request, me, form)
        if action == "role":
            await accounts.set_role(console, target, role, by=me.id)
        elif action in ("disable", "enable"):
            await accounts.set_disabled(console, target, action == "disable", by=me.id)
        elif action == "unlock":
            await accounts.unlock(console, target, by=me.id)
        elif action == "reset-second-factor":
            await accounts.reset_second_factor(console, target, by=me.id)
        else:  # reset-password
            await accounts.change_password(
                console, target, str(form.get("password", ""))[:300], by=me.id, must_change=True
            )
            await console.sessions.delete_for_staff(target.id)
    except accounts.StaffError as exc:
        return await _staff_page(request, f"{target.name}: {exc}")
    raise see_other("/admin/staff", msg=f"staff_{action}")


@routes.post("/admin/security")
@access("admin")
async def security_settings(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    roles = sorted({str(r) for r in form.getall("totp_role", []) if str(r) in ROLES})
    await accounts.set_totp_required_roles(
        get_console(request), roles, by=current_staff(request).id
    )
    raise see_other("/admin/staff", msg="security_saved")


# -- the section's settings ---------------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def diff(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Only what changed, by dotted path: the before and after of a settings fact."""
    flat_before, flat_after = _flatten(before), _flatten(after)
    keys = sorted(set(flat_before) | set(flat_after))
    changed = [k for k in keys if flat_before.get(k) != flat_after.get(k)]
    return (
        {k: flat_before.get(k) for k in changed},
        {k: flat_after.get(k) for k in changed},
    )


async def _section_context(request: web.Request, section: str) -> dict[str, Any]:
    console = get_console(request)
    config = await console.config.get()
    value = getattr(config, section)
    stored = (await stored_sections(console.db)).get(section)
    ctx: dict[str, Any] = {
        "section": section,
        "title": SECTION_TITLES[section],
        "stored": stored,
        "value": value,
    }
    if section in YAML_SECTIONS:
        ctx["text"] = (
            await _saved_text(console.db, section, value)
            if stored
            else console.config.file_text(section)
        )
    if section == "messages":
        ctx["groups"] = message_inputs(value)
        ctx["bad"] = frozenset()
    if section == "keywords":
        ctx["official"] = value.official
        ctx["extra"] = "\n".join(value.extra)
    return ctx


@routes.get("/admin/settings/{section}")
@access("admin")
async def section_form(request: web.Request) -> web.StreamResponse:
    section = request.match_info["section"]
    if section not in SECTION_TITLES:
        raise not_found(request)
    if section == "hours":
        return render(request, "admin_hours.html", await _hours_context(request))
    return render(request, "admin_section.html", await _section_context(request, section))


@routes.post("/admin/settings/{section}")
@access("admin")
async def section_save(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    section = request.match_info["section"]
    if section not in SECTION_TITLES:
        raise not_found(request)
    form = await request.post()
    current = getattr(await console.config.get(), section)
    if section == "hours":
        return await _hours_save(request, form, current)
    before = current.model_dump(mode="json")
    try:
        if section in YAML_SECTIONS:
            text = str(form.get("text", ""))[:200_000]
            value = parse_section_yaml(section, text)
        elif section == "keywords":
            words = [w.strip() for w in str(form.get("extra", "")).splitlines() if w.strip()]
            value = parse_section(section, {"extra": words})
        else:
            value = messages_from_form(current, form)
    except MessagesFormError as exc:
        ctx = await _section_context(request, section)
        return render(
            request,
            "admin_section.html",
            {
                **ctx,
                "groups": message_inputs(current, form),
                "problems": exc.problems,
                "bad": frozenset(exc.bad),
                "error": MESSAGES_NOT_SAVED,
            },
            status=400,
        )
    except ConfigError as exc:
        ctx = await _section_context(request, section)
        if section in YAML_SECTIONS:
            ctx["text"] = str(form.get("text", ""))
        return render(
            request,
            "admin_section.html",
            {**ctx, "error": f"保存できませんでした。直してください: {exc}"},
            status=400,
        )
    after = await _store_section(request, section, before, value)
    if section in YAML_SECTIONS:
        await console.db[SETTINGS_TEXTS].replace_one(
            {"_id": section},
            {"_id": section, "text": text.replace("\r\n", "\n"), "value": after},
            upsert=True,
        )
    raise see_other(f"/admin/settings/{section}", msg="saved")


async def _store_section(
    request: web.Request, section: str, before: dict[str, Any], value: BaseModel
) -> dict[str, Any]:
    """Put ``value`` (validated) in force for every service, with its audit fact, unless it is
    what is already in force; returns it as JSON."""
    console = get_console(request)
    after = value.model_dump(mode="json")
    if before != after:
        await save_override(console.db, section, value, staff_id=current_staff(request).id)
        console.config.invalidate()
        await _settings_changed(request, section, before, after)
    return after


async def _hours_context(
    request: web.Request, form: HoursForm | None = None, **extra: Any
) -> dict[str, Any]:
    console = get_console(request)
    hours: HoursConfig = (await console.config.get()).hours
    return {
        "section": "hours",
        "title": SECTION_TITLES["hours"],
        "stored": (await stored_sections(console.db)).get("hours"),
        "form": (form or HoursForm.from_config(hours)).padded(),
        "preview": hours_preview(hours, _today(hours)),
        "timezone": hours.timezone.key,
        "file_text": console.config.file_text("hours"),
        "problems": [],
        "bad": frozenset(),
        **extra,
    }


def _today(hours: HoursConfig) -> date:
    return utcnow().astimezone(hours.timezone).date()


async def _hours_save(
    request: web.Request, posted: Any, current: HoursConfig
) -> web.StreamResponse:
    """The hours form: 保存する (``action=save``), 保存しないで確かめる (``preview``) or
    行をふやす (``more``), which only shows the same form with more empty rows."""
    form = HoursForm.from_post(posted)
    action = str(posted.get("action", "save"))
    if action == "more":
        return render(request, "admin_hours.html", await _hours_context(request, form.more()))
    try:
        value = form.to_config(current.timezone)
    except HoursFormError as exc:
        ctx = await _hours_context(request, form, problems=exc.problems, bad=exc.fields)
        what = "保存できませんでした" if action == "save" else "確かめられませんでした"
        error = f"{what}。次のところを直してください（まだ保存していません）。"
        return render(request, "admin_hours.html", {**ctx, "error": error}, status=400)
    if action == "preview":
        draft = hours_preview(value, _today(value))
        return render(request, "admin_hours.html", await _hours_context(request, form, draft=draft))
    await _store_section(request, "hours", current.model_dump(mode="json"), value)
    raise see_other("/admin/settings/hours", msg="saved")


# The YAML an admin saved, comments and layout kept, shown again while it is what is in force
# (the override stores only the parsed value; dumping it back lost every comment).
SETTINGS_TEXTS = "console_settings_texts"


async def _saved_text(db: Any, section: str, value: Any) -> str:
    doc = await db[SETTINGS_TEXTS].find_one({"_id": section})
    if doc is not None and doc.get("value") == value.model_dump(mode="json"):
        return str(doc["text"])
    return section_yaml(value)


async def _settings_changed(
    request: web.Request, section: str, before: dict[str, Any], after: dict[str, Any]
) -> None:
    """The audit fact of a settings edit: only what changed, before and after."""
    changed_before, changed_after = diff(before, after)
    if not (changed_before or changed_after):
        return
    await get_console(request).emit(
        F.SETTINGS_CHANGED,
        {
            "what": f"config.{section}",
            "before": changed_before,
            "after": changed_after,
            "staff_id": current_staff(request).id,
        },
    )


@routes.post("/admin/settings/{section}/reset")
@access("admin")
async def section_reset(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    section = request.match_info["section"]
    if section not in SECTION_TITLES:
        raise not_found(request)
    before = getattr(await console.config.get(), section).model_dump(mode="json")
    after = getattr(console.config.files, section).model_dump(mode="json")
    await delete_override(console.db, section)
    await console.db[SETTINGS_TEXTS].delete_one({"_id": section})
    console.config.invalidate()
    await _settings_changed(request, section, before, after)
    raise see_other(f"/admin/settings/{section}", msg="reset")


# -- canned responses ---------------------------------------------------------------------------


@routes.get("/admin/canned")
@access("admin")
async def canned_list(request: web.Request) -> web.StreamResponse:
    docs = await get_console(request).db[CANNED].find({}).sort("order", 1).to_list()
    return render(request, "admin_canned.html", {"items": [Canned.model_validate(d) for d in docs]})


@routes.post("/admin/canned")
@access("admin")
async def canned_add(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    form = await request.post()
    title = str(form.get("title", "")).strip()[:60]
    text = str(form.get("text", "")).replace("\r\n", "\n").strip()
    if not title or not text or len(text) > 5000:
        docs = await console.db[CANNED].find({}).sort("order", 1).to_list()
        return render(
            request,
            "admin_canned.html",
            {
                "items": [Canned.model_validate(d) for d in docs],
                "error": "見出しと本文（5000文字まで）を入れてください。",
            },
            status=400,
        )
    count = await console.db[CANNED].count_documents({})
    item = Canned(id=new_id(), title=title, text=text, order=count)
    await console.db[CANNED].insert_one(item.to_document())
    await console.emit(
        F.SETTINGS_CHANGED,
        {
            "what": f"canned_responses.{item.id}",
            "before": None,
            "after": {"title": title, "text": text},
            "staff_id": current_staff(request).id,
        },
    )
    raise see_other("/admin/canned", msg="saved")


@routes.post("/admin/canned/{canned_id}/delete")
@access("admin")
async def canned_delete(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    doc = await console.db[CANNED].find_one({"_id": request.match_info["canned_id"][:64]})
    if doc is None:
        raise not_found(request)
    await console.db[CANNED].delete_one({"_id": doc["_id"]})
    await console.emit(
        F.SETTINGS_CHANGED,
        {
            "what": f"canned_responses.{doc['_id']}",
            "before": {"title": doc.get("title"), "text": doc.get("text")},
            "after": None,
            "staff_id": current_staff(request).id,
        },
    )
    raise see_other("/admin/canned", msg="saved")


# -- broadcasts ---------------------------------------------------------------------------------


async def _broadcast_context(
    request: web.Request,
    choices: broadcast_ops.Choices | None = None,
    preview: broadcast_ops.Preview | None = None,
    **extra: Any,
) -> dict[str, Any]:
    console = get_console(request)
    if choices is None:
        choices = broadcast_ops.Choices(
            template=request.query.get("template", "open_now"),
            period=request.query.get("period", "")[:1000],
            audience=request.query.get("audience", "registered"),
            due_at=None,
        )
    counts = {a: await broadcast_ops.count_audience(console, a) for a in broadcast_ops.AUDIENCES}
    return {
        "templates": broadcast_ops.TEMPLATES,
        "audiences": broadcast_ops.AUDIENCES,
        "choices": choices,
        "due_value": f"{choices.due_at.astimezone(TOKYO):%Y-%m-%dT%H:%M}" if choices.due_at else "",
        "preview": preview,
        "counts": counts,
        "items": await broadcast_ops.recent(console),
        "names": await accounts.staff_names(console),
        "budget": await broadcast_ops.budget(console),
        **extra,
    }


@routes.get("/admin/broadcasts")
@access("admin")
async def broadcast_page(request: web.Request) -> web.StreamResponse:
    return render(request, "admin_broadcasts.html", await _broadcast_context(request))


def _due(form_value: str) -> datetime | None:
    if not form_value:
        return None
    try:
        return datetime.strptime(form_value[:16], "%Y-%m-%dT%H:%M").replace(tzinfo=TOKYO)
    except ValueError:
        raise broadcast_ops.BroadcastError("予約の日時の形が正しくありません。") from None


def _choices(form: Any) -> broadcast_ops.Choices:
    """The choices as the form shows them; :class:`BroadcastError` when the time is unusable."""
    later = form.get("when") == "later"
    due = _due(str(form.get("due_at", ""))) if later else None
    choices = broadcast_ops.Choices(
        template=str(form.get("template", "")),
        period=str(form.get("period", ""))[:1000],
        audience=str(form.get("audience", "")),
        due_at=due,
    )
    if later and due is None:
        raise BroadcastFormError("予約する日時を入れてください。", choices)
    return choices


class BroadcastFormError(broadcast_ops.BroadcastError):
    def __init__(self, message: str, choices: broadcast_ops.Choices) -> None:
        super().__init__(message)
        self.choices = choices


@routes.post("/admin/broadcasts/preview")
@access("admin")
async def broadcast_preview(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    choices = None
    try:
        choices = _choices(form)
        shown = await broadcast_ops.preview(get_console(request), current_staff(request), choices)
    except broadcast_ops.BroadcastError as exc:
        context = await _broadcast_context(
            request, getattr(exc, "choices", choices), error=str(exc)
        )
        return render(request, "admin_broadcasts.html", context, status=400)
    context = await _broadcast_context(request, choices, shown)
    return render(request, "admin_broadcasts.html", context)


@routes.post("/admin/broadcasts")
@access("admin")
async def broadcast_request(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    form = await request.post()
    choices = None
    try:
        choices = _choices(form)
        await broadcast_ops.send(
            console,
            current_staff(request),
            str(form.get("token", "")),
            choices,
            repeat_confirmed=form.get("repeat_confirmed") == "1",
            budget_confirmed=form.get("budget_confirmed") == "1",
        )
    except broadcast_ops.PreviewMismatch as exc:
        context = await _broadcast_context(request, choices, exc.preview, error=str(exc))
        return render(request, "admin_broadcasts.html", context, status=409)
    except broadcast_ops.BroadcastError as exc:
        context = await _broadcast_context(
            request, getattr(exc, "choices", choices), error=str(exc)
        )
        return render(request, "admin_broadcasts.html", context, status=400)
    raise see_other("/admin/broadcasts", msg="broadcast_requested")


@routes.post("/admin/broadcasts/{broadcast_id}/cancel")
@access("admin")
async def broadcast_cancel(request: web.Request) -> web.StreamResponse:
    await broadcast_ops.cancel(
        get_console(request), request.match_info["broadcast_id"][:64], current_staff(request)
    )
    raise see_other("/admin/broadcasts", msg="broadcast_cancelled")


@routes.get("/admin/broadcasts/fragment")
@access("admin")
async def broadcast_fragment(request: web.Request) -> web.StreamResponse:
    return render(request, "admin_broadcasts_list.html", await _broadcast_context(request))


# -- reports (the section) ----------------------------------------------------------------------


def report_files(directory: Path) -> list[dict[str, Any]]:
    if not directory.is_dir():
        return []
    out = []
    for path in directory.iterdir():
        match = REPORT_NAME.match(path.name)
        if match and path.is_file():
            out.append(
                {
                    "name": path.name,
                    "month": f"{match[1]}-{match[2]}",
                    "label": f"{match[1]}年{int(match[2])}月",
                    "kind": match[3].upper(),
                    "size": path.stat().st_size,
                }
            )
    return sorted(out, key=lambda f: (f["month"], f["kind"]), reverse=True)


@routes.get("/reports")
@access(*REPORT_ROLES)
async def reports(request: web.Request) -> web.StreamResponse:
    files = report_files(get_console(request).settings.reports_dir)
    return render(request, "reports.html", {"files": files})


@routes.get("/reports/{name}")
@access(*REPORT_ROLES)
async def report_download(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    name = request.match_info["name"]
    match = REPORT_NAME.match(name)
    path = console.settings.reports_dir / name
    if match is None or not path.is_file():
        raise not_found(request)
    await console.emit(
        F.REPORT_DOWNLOADED,
        {"month": f"{match[1]}-{match[2]}", "file": name, "staff_id": current_staff(request).id},
    )
    kind = {
        "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "pdf": "application/pdf",
    }[match[3]]
    return web.FileResponse(
        path,
        headers={
            "Content-Type": kind,
            "Content-Disposition": f'attachment; filename="{name}"',
        },
    )
