"""Sign-in, second factor, password change, sign-out."""

from __future__ import annotations

from aiohttp import web

from soudan_console import staff as accounts
from soudan_console.security import new_totp_secret, totp_uri, verify_password
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
        response = render(request, "login.html", {"next": request.query.get("next", "")})
        set_session_cookie(request, response, session.token)
        return response
    return render(request, "login.html", {"next": request.query.get("next", "")})


@routes.post("/login")
@access(stage="public")
async def login(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    form = await request.post()
    email = str(form.get("email", ""))[:200]
    password = str(form.get("password", ""))[:1000]
    target = safe_next(str(form.get("next", "")))
    result = await accounts.authenticate(console, email, password, client_source(request))
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
        await accounts.login_succeeded(console, staff, second_factor=False)
        session = await console.sessions.create(staff.id, "full")
        response = see_other(target if target != "/" else accounts_home(staff.role))
    set_session_cookie(request, response, session.token)
    raise response


def accounts_home(role: str) -> str:
    return home_for(role)


@routes.get("/login/second-factor")
@access(stage="second_factor")
async def second_factor_form(request: web.Request) -> web.StreamResponse:
    return render(request, "second_factor.html", {"next": request.query.get("next", "")})


@routes.post("/login/second-factor")
@access(stage="second_factor")
async def second_factor(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    staff = request[PENDING_STAFF]
    form = await request.post()
    target = safe_next(str(form.get("next", "")))
    error = await accounts.check_second_factor(
        console, staff, str(form.get("code", ""))[:20], client_source(request)
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
    await accounts.login_succeeded(console, staff, second_factor=True)
    session = await console.sessions.create(staff.id, "full")
    response = see_other(target if target != "/" else home_for(staff.role))
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
    if not await verify_password(staff.password_hash, current):
        return render(
            request, "password.html", {**ctx, "error": "今のパスワードがちがいます。"}, status=400
        )
    if new != again:
        return render(
            request,
            "password.html",
            {**ctx, "error": "新しいパスワードが2回とも同じになっていません。"},
            status=400,
        )
    try:
        await accounts.change_password(console, staff, new, by=staff.id)
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
    secret = new_totp_secret()
    required = staff.role in await accounts.totp_required_roles(console)
    return render(
        request,
        "second_factor_setup.html",
        {
            "secret": secret,
            "uri": totp_uri(secret, staff.email),
            "required": required,
            "enabled": staff.totp_enabled,
        },
    )


@routes.post("/account/second-factor")
@access(forced_ok=True)
async def second_factor_setup(request: web.Request) -> web.StreamResponse:
    console = get_console(request)
    staff = current_staff(request)
    form = await request.post()
    secret = str(form.get("secret", ""))[:64]
    code = str(form.get("code", ""))[:20]
    if not secret or not await accounts.enable_second_factor(console, staff, secret, code):
        return render(
            request,
            "second_factor_setup.html",
            {
                "secret": secret,
                "uri": totp_uri(secret, staff.email) if secret else "",
                "required": staff.role in await accounts.totp_required_roles(console),
                "enabled": staff.totp_enabled,
                "error": "確認コードがちがいます。アプリに出ている6けたの数字を入れてください。",
            },
            status=400,
        )
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
    raise see_other(safe_next(str(form.get("back", "/queue"))), msg="status")
