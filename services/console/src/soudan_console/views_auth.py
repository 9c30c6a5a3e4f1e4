"""Sign-in, second factor, password change, sign-out."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from aiohttp import web

from soudan_console import staff as accounts
from soudan_console.domain import Staff
from soudan_console.security import new_totp_secret, totp_qr, totp_uri
from soudan_console.web import (
    PENDING_STAFF,
    SESSION,
    STAFF_KEY,
    access,
    clear_session_cookie,
    client_source,
    current_session,
    current_staff,
    get_console,
    render,
    safe_next,
    see_other,
    set_session_cookie,
)

routes = web.RouteTableDef()


def _next_of(request: web.Request) -> str:
    """The page asked for before sign-in, if it is one of ours (else nothing to carry)."""
    target = next_page(request, request.query.get("next", ""))
    return "" if target == "/" else target


# Console pages a sign-in may lead to: a path of plain segments (no empty, ``.`` or ``..``
# segment, no percent-escape) that one of the console's own GET pages answers.
_SEGMENT = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,199}")
_NOT_LANDING = ("/login", "/logout", "/events", "/session/", "/static/")


def next_page(request: web.Request, target: str | None) -> str:
    """Where to go after sign-in: ``target`` when it is a page of this console, else ``/``.

    :func:`safe_next` refuses anything a browser could read as another host; on top of it the
    path must be a normalised one (``/%2e%2e//host`` becomes ``/..//host`` in the Location
    header and ``//host`` in the browser, a full-width ``／`` or ``%2F`` hides a second slash),
    and it must name a page the console has. The query is kept, re-encoded; a fragment is not.
    """
    target = safe_next(target)
    if target == "/":
        return "/"
    parts = urlsplit(target)
    segments = parts.path.split("/")[1:]
    if not segments or not all(_SEGMENT.fullmatch(s) for s in segments):
        return "/"
    if not _is_page(request.app, parts.path):
        return "/"
    query = urlencode(parse_qsl(parts.query, keep_blank_values=True))
    return parts.path + (f"?{query}" if query else "")


def _is_page(app: web.Application, path: str) -> bool:
    if path.startswith(_NOT_LANDING) or path.endswith("/fragment"):
        return False
    for resource in app.router.resources():
        info = resource.get_info()
        if "path" in info:
            hit = info["path"] == path
        elif "pattern" in info:
            hit = info["pattern"].fullmatch(path) is not None
        else:  # the static files
            continue
        if hit and any(route.method in ("GET", "*") for route in resource):
            return True
    return False


def home_for(role: str) -> str:
    return {"section": "/reports", "admin": "/admin"}.get(role, "/queue")


@routes.get("/")
@access(forced_ok=True)
async def home(request: web.Request) -> web.StreamResponse:
    raise see_other(home_for(current_staff(request).role))


@routes.get("/login")
@access(stage="public")
async def login_form(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    session = current_session(request)
    if session is not None and session.stage == "full" and request.get(STAFF_KEY):
        raise see_other("/")
    if session is None:
        # An anonymous session only carries the CSRF token of the login form.
        session = await console.sessions.create(None, "anonymous")
        request[SESSION] = session
        response = render(request, "login.html", {"next": _next_of(request)})
        set_session_cookie(request, response, session.token)
        return response
    return render(request, "login.html", {"next": _next_of(request)})


@routes.post("/login")
@access(stage="public")
async def login(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    form = await request.post()
    email = str(form.get("email", ""))[:200]
    password = str(form.get("password", ""))[:1000]
    target = next_page(request, str(form.get("next", "")))
    result = await accounts.authenticate(
        console, email, password, client_source(request), _devices(request)
    )
    if result.staff is None:
        response = render(
            request,
            "login.html",
            {"error": result.error, "email": email, "next": target},
            status=401 if result.retry_after is None else 429,
        )
        if result.retry_after is not None:
            response.headers["Retry-After"] = str(result.retry_after)
        return response
    staff = result.staff
    old = current_session(request)
    if old is not None:
        await console.sessions.delete(old)
    if staff.totp_enabled:
        session = await console.sessions.create(staff.id, "second_factor")
        response = see_other("/login/second-factor", next=target)
    else:
        await accounts.login_succeeded(
            console, staff, second_factor=False, source=client_source(request)
        )
        session = await console.sessions.create(staff.id, "full")
        response = see_other(target if target != "/" else accounts_home(staff.role))
        await _remember_device(request, response, staff)
    set_session_cookie(request, response, session.token)
    raise response


def _devices(request: web.Request) -> list[str]:
    return accounts.device_tokens(request.cookies.get(accounts.DEVICE_COOKIE))


async def _remember_device(
    request: web.Request, response: web.StreamResponse, staff: Staff
) -> None:
    """A full sign-in: this browser is one its owner uses (see ``staff.trusted_device``)."""
    console = get_console(request)
    value = await accounts.remember_device(console, staff, _devices(request))
    response.set_cookie(
        accounts.DEVICE_COOKIE,
        value,
        max_age=console.settings.console_device_trust_days * 86400,
        httponly=True,
        secure=not console.settings.console_development,
        samesite="Strict",
        path="/",
    )


def accounts_home(role: str) -> str:
    return home_for(role)


@routes.get("/login/second-factor")
@access(stage="second_factor")
async def second_factor_form(request: web.Request) -> web.StreamResponse:
    return render(request, "second_factor.html", {"next": _next_of(request)})


@routes.post("/login/second-factor")
@access(stage="second_factor")
async def second_factor(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    staff = request[PENDING_STAFF]
    form = await request.post()
    target = next_page(request, str(form.get("next", "")))
    error = await accounts.check_second_factor(
        console, staff, str(form.get("code", ""))[:20], client_source(request), _devices(request)
    )
    if error is not None:
        if error == accounts.LOCKED:
            old = current_session(request)
            if old is not None:
                await console.sessions.delete(old)
            response = render(request, "login.html", {"error": error}, status=401)
            clear_session_cookie(request, response)
            return response
        return render(request, "second_factor.html", {"error": error, "next": target}, status=401)
    old = current_session(request)
    if old is not None:
        await console.sessions.delete(old)
    await accounts.login_succeeded(
        console, staff, second_factor=True, source=client_source(request)
    )
    session = await console.sessions.create(staff.id, "full")
    response = see_other(target if target != "/" else home_for(staff.role))
    await _remember_device(request, response, staff)
    set_session_cookie(request, response, session.token)
    raise response


@routes.post("/logout")
@access(forced_ok=True)
async def logout(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    session = current_session(request)
    if session is not None:
        await console.sessions.delete(session)
    response = see_other("/login", msg="logged_out")
    clear_session_cookie(request, response)
    raise response


@routes.get("/password")
@access(forced_ok=True)
async def password_form(request: web.Request) -> web.StreamResponse:
    staff = current_staff(request)
    console = get_console(request)
    return render(
        request,
        "password.html",
        {
            "forced": accounts.needs_password_change(console, staff),
            "min_length": console.settings.console_password_min_length,
        },
    )


@routes.post("/password")
@access(forced_ok=True)
async def password_change(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    staff = current_staff(request)
    form = await request.post()
    current = str(form.get("current", ""))[:1000]
    new = str(form.get("new", ""))[:1000]
    again = str(form.get("again", ""))[:1000]
    ctx = {
        "forced": accounts.needs_password_change(console, staff),
        "min_length": console.settings.console_password_min_length,
    }
    refused = await accounts.reauthenticate(
        console,
        staff,
        current,
        str(form.get("current_code", ""))[:20],
        client_source(request),
        _devices(request),
    )
    if refused is not None:
        status = 429 if refused == accounts.REAUTH_LOCKED else 400
        return render(request, "password.html", {**ctx, "error": refused}, status=status)
    if new != again:
        return render(
            request,
            "password.html",
            {**ctx, "error": "新しいパスワードが2回とも同じになっていません。"},
            status=400,
        )
    try:
        await accounts.change_password(console, staff, new, by=staff.id, reauthenticated=True)
    except accounts.StaffError as exc:
        return render(request, "password.html", {**ctx, "error": str(exc)}, status=400)
    session = current_session(request)
    await console.sessions.delete_for_staff(staff.id, keep=session.key if session else None)
    raise see_other(home_for(staff.role), msg="password_changed")


@routes.get("/account/second-factor")
@access(forced_ok=True)
async def second_factor_setup_form(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    staff = current_staff(request)
    required = staff.role in await accounts.totp_required_roles(console)
    return render(
        request,
        "second_factor_setup.html",
        {
            **_setup_context(new_totp_secret(), staff.email),
            "required": required,
            "enabled": staff.totp_enabled,
        },
    )


def _setup_context(secret: str, email: str) -> dict[str, Any]:
    """The new key, its URI and the same URI as a QR code (an SVG drawn here, no network)."""
    if not secret:
        return {"secret": "", "uri": "", "qr": ""}
    uri = totp_uri(secret, email)
    return {"secret": secret, "uri": uri, "qr": totp_qr(uri)}


@routes.post("/account/second-factor")
@access(forced_ok=True)
async def second_factor_setup(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    staff = current_staff(request)
    form = await request.post()
    secret = str(form.get("secret", ""))[:64]
    code = str(form.get("code", ""))[:20]

    async def again(error: str, status: int) -> web.Response:
        return render(
            request,
            "second_factor_setup.html",
            {
                **_setup_context(secret, staff.email),
                "required": staff.role in await accounts.totp_required_roles(console),
                "enabled": staff.totp_enabled,
                "error": error,
            },
            status=status,
        )

    refused = await accounts.reauthenticate(
        console,
        staff,
        str(form.get("current", ""))[:1000],
        str(form.get("current_code", ""))[:20],
        client_source(request),
        _devices(request),
    )
    if refused is not None:
        return await again(refused, 429 if refused == accounts.REAUTH_LOCKED else 400)
    if not secret or not await accounts.enable_second_factor(console, staff, secret, code):
        return await again(
            "確認コードがちがいます。アプリに出ている6けたの数字を入れてください。", 400
        )
    # Like a new password: a session opened with the old factor elsewhere ends now.
    session = current_session(request)
    await console.sessions.delete_for_staff(staff.id, keep=session.key if session else None)
    raise see_other(home_for(staff.role), msg="second_factor_on")


@routes.post("/session/touch")
@access(forced_ok=True)
async def touch(request: web.Request) -> web.StreamResponse:
    """The page is in use (typing, clicking): keep the session from idling out."""
    return web.Response(status=204)


@routes.post("/status")
@access("counselor", "supervisor", "admin")
async def set_status(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    staff = current_staff(request)
    form = await request.post()
    status = str(form.get("status", ""))
    if status in ("available", "away"):
        await accounts.set_status(console, staff, status)
    raise see_other(next_page(request, str(form.get("back", "/queue"))), msg="status")
