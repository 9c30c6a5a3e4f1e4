"""The live stream (``/events``): Server-Sent Events for as long as the session is good."""

from __future__ import annotations

from aiohttp import web

from soudan_console import live
from soudan_console.domain import CASE_ROLES
from soudan_console.staff import get_staff
from soudan_console.web import access, current_session, current_staff, get_console

routes = web.RouteTableDef()


@routes.get("/events")
@access(*CASE_ROLES)
async def events(request: web.Request) -> web.StreamResponse:
    """Events for the staff member's role until the browser leaves or the session ends.

    The session ends the stream at logout, expiry, disabling, a role change or a password
    change: at once in this process; in the other console processes at once for a disable, a
    role change or a password an admin set (their facts reach every process,
    :data:`live.ENDING_FACTS`), within one re-check (``recheck`` seconds) for the rest.
    """
    console = get_console(request)
    staff = current_staff(request)
    session = current_session(request)
    if session is None:  # @access lets only a full session through; this keeps mypy sure
        raise web.HTTPUnauthorized()
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    client = console.hub.connect(staff.id, staff.role, session.key)

    async def still_valid() -> bool:
        loaded = await console.sessions.load(session.token)
        if loaded is None or loaded.stage != "full":
            return False
        now = await get_staff(console, staff.id)
        if now is None or now.disabled or now.role != staff.role:
            return False
        await console.sessions.mark_live(loaded)
        return True

    try:
        await response.prepare(request)
        await console.sessions.mark_live(session)
        await live.stream(
            client,
            response.write,
            still_valid=still_valid,
            recheck=console.settings.console_live_recheck_seconds,
        )
    except ConnectionResetError:
        pass
    finally:
        console.hub.disconnect(client)
    return response
