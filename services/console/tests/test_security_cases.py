"""Security of the case pages over plain HTTP: reply forms bound to their case, every case action
checked by the rule the page shows, live streams ending with their session in every console
process, student text shown as it really is."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from soudan_console.app import create_app
from soudan_console.domain import EMERGENCIES
from soudan_console.settings import ConsoleSettings
from soudan_console.testing import (
    PASSWORD,
    REPLY_FORM_ID,
    Browserless,
    RunningConsole,
    queued_send_texts,
    reply_form_id,
    seed_case,
)
from soudan_shared import fact_types as F
from soudan_shared.records import CASES, MESSAGES
from soudan_shared.runtime import start_site
from soudan_shared.testing.proxy import free_port
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import Topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

# -- item 1: a reply form is one send ---------------------------------------------------------


async def test_a_reply_form_sent_twice_at_once_asks_for_one_send_and_one_reply(
    running: RunningConsole,
    client: Callable[[], Browserless],
    rabbitmq_url: str,
    topology: Topology,
) -> None:
    counselor = await running.add_staff("counselor")
    case = await seed_case(running.store, state="active", claimed_by=counselor.id)
    c = client()
    await c.login(counselor.email)
    _, _, page = await c.get(f"/cases/{case.id}")
    form = {"text": "だいじょうぶだよ", "command_id": reply_form_id(page)}
    # A double click that the browser sent twice before the first answer came back.
    answers = await asyncio.gather(*(c.post(f"/cases/{case.id}/reply", form) for _ in range(3)))
    assert [(status, path) for status, path, _ in answers] == [
        (200, f"/cases/{case.id}?msg=sending")
    ] * 3
    commands = await wait_until(lambda: queued_send_texts(rabbitmq_url, topology))
    await asyncio.sleep(0.5)  # a second command would have been published by now
    commands += await queued_send_texts(rabbitmq_url, topology)
    assert [(cmd.id, cmd.texts) for cmd in commands] == [(form["command_id"], ["だいじょうぶだよ"])]
    assert len(running.facts_of(F.REPLY_REQUESTED)) == 1
    stored = await running.store.db[MESSAGES].count_documents({"direction": "out"})
    assert stored == 1


# -- item 2: every case action checks the rule the page shows ------------------------------------

ACTIONS = ("claim", "reply", "notes", "release", "transfer", "close", "emergency")
TAKEN = {
    "claim": "msg=claimed",
    "reply": "msg=sending",
    "notes": "msg=noted",
    "release": "msg=released",
    "transfer": "msg=transferred",
    "close": "msg=closed",
}


@pytest.mark.parametrize(
    ("role", "state", "holder"),
    [
        ("counselor", "waiting", None),
        ("counselor", "active", "self"),
        ("counselor", "active", "other"),
        ("counselor", "closed", "self"),
        ("supervisor", "waiting", None),
        ("supervisor", "active", "other"),
        ("supervisor", "closed", "other"),
        ("admin", "active", "other"),
    ],
)
async def test_every_case_action_is_taken_exactly_when_the_case_page_offers_it(
    running: RunningConsole,
    client: Callable[[], Browserless],
    role: str,
    state: str,
    holder: str | None,
) -> None:
    person = await running.add_staff(role)
    colleague = await running.add_staff("counselor")
    other = await running.add_staff("counselor")
    c = client()
    await c.login(person.email)
    claimed_by = {"self": person.id, "other": other.id, None: None}[holder]
    for action in ACTIONS:
        case = await seed_case(running.store, state=state, claimed_by=claimed_by)
        status, _, page = await c.get(f"/cases/{case.id}")
        offered = status == 200 and f'action="/cases/{case.id}/{action}"' in page
        found = REPLY_FORM_ID.search(page)
        data = {
            "reply": {"text": "こんにちは", "command_id": found.group(1) if found else "x"},
            "notes": {"note": "様子を見る"},
            "transfer": {"to": colleague.id},
            "close": {"categories": ["bullying"], "outcome": "resolved"},
            "emergency": {"type": "other"},
        }.get(action, {})
        status, path, _ = await c.post(f"/cases/{case.id}/{action}", data)
        if action == "emergency":
            taken = path.startswith("/emergencies/")
        else:
            taken = status == 200 and path.endswith(TAKEN[action])
        assert (action, taken) == (action, offered)
        if not taken:  # refused in words; a claim sends back to the queue, saying why
            refused = status == 403 or (action == "claim" and path.startswith("/queue?msg="))
            assert (action, refused) == (action, True)


async def test_a_case_is_handed_over_only_to_someone_the_page_lists(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    supervisor = await running.add_staff("supervisor")
    owner = await running.add_staff("counselor")
    admin = await running.add_staff("admin")
    section = await running.add_staff("section")
    gone = await running.add_staff("counselor", disabled=True)
    helper = await running.add_staff("counselor")
    case = await seed_case(running.store, state="active", claimed_by=owner.id)
    s = client()
    await s.login(supervisor.email)
    for page_path in (f"/cases/{case.id}", "/supervise"):
        _, _, page = await s.get(page_path)
        listed = set(re.findall(r'<option value="([0-9a-f]{32})"', page))
        assert helper.id in listed
        assert not {admin.id, section.id, gone.id, owner.id} & listed
    for person in (admin, section, gone, owner):
        status, _, _ = await s.post(f"/cases/{case.id}/transfer", {"to": person.id})
        assert status == 400
        doc = await running.store.db[CASES].find_one({"_id": case.id})
        assert doc["claimed_by"] == owner.id
    status, path, _ = await s.post(f"/cases/{case.id}/transfer", {"to": helper.id})
    assert (status, path) == (200, "/queue?msg=transferred")


async def test_a_closed_emergency_takes_no_more_contacts_and_is_not_closed_again(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    counselor = await running.add_staff("counselor")
    case = await seed_case(running.store, state="active", claimed_by=counselor.id)
    c = client()
    await c.login(counselor.email)
    _, path, _ = await c.post(f"/cases/{case.id}/emergency", {"type": "suicide_notice"})
    emergency = path.split("?")[0]
    assert emergency.startswith("/emergencies/")
    status, path, _ = await c.post(f"{emergency}/close", {"summary": "課に連絡して対応を終えた"})
    assert (status, path) == (200, f"{emergency}?msg=emergency_closed")

    _, _, page = await c.get(emergency)
    assert f'action="{emergency}/contacts"' not in page
    assert f'action="{emergency}/close"' not in page
    contact = {"agency": "警察", "result": "referred", "memo": "あとから"}
    status, _, html = await c.post(f"{emergency}/contacts", contact)
    assert status == 409
    assert "終わっています" in html
    status, _, html = await c.post(f"{emergency}/close", {"summary": "上書きするまとめ"})
    assert status == 409
    assert "終わっています" in html
    doc = await running.store.db[EMERGENCIES].find_one({"_id": emergency.split("/")[-1]})
    assert doc["contacts"] == []
    assert doc["summary"] == "課に連絡して対応を終えた"


# -- item 4: a live stream ends with its session in every console process ---------------------


@contextlib.asynccontextmanager
async def another_console(running: RunningConsole, tmp_path: Path) -> AsyncIterator[str]:
    """A second console process on the same store and broker (as behind a load balancer)."""
    settings = ConsoleSettings(console_development=True, reports_dir=tmp_path / "reports2")
    app = create_app(settings, tick=0.5)
    port = free_port()
    runner = await start_site(app, port, "127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until(lambda: _ready(url), timeout=20, message="second console ready")
        yield url
    finally:
        await runner.cleanup()


async def _ready(url: str) -> bool:
    import aiohttp

    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def _read_events(response: Any, seconds: float) -> str:
    lines: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while line := await response.content.readline():
                lines.append(line.decode())
    return "".join(lines)


@pytest.fixture
def console_overrides() -> dict[str, Any]:
    # A re-check far slower than the default, so an ending seen only there fails the test.
    return {"console_live_recheck_seconds": 30}


@pytest.mark.parametrize("ending", ["disabled", "role_changed", "password_reset"])
async def test_a_live_stream_ends_at_once_when_another_console_process_disables_demotes_or_resets(
    running: RunningConsole, client: Callable[[], Browserless], tmp_path: Path, ending: str
) -> None:
    counselor = await running.add_staff("counselor")
    admin = await running.add_staff("admin")
    c = client()
    await c.login(counselor.email)
    async with another_console(running, tmp_path) as elsewhere:
        a = Browserless(elsewhere)
        try:
            await a.login(admin.email)
            async with c.http.get(running.url + "/events") as stream:
                assert "retry:" in await _read_events(stream, 0.3)
                if ending == "disabled":
                    await a.post(f"/admin/staff/{counselor.id}/disable", {"current": PASSWORD})
                elif ending == "role_changed":
                    form = {"role": "supervisor", "current": PASSWORD}
                    await a.post(f"/admin/staff/{counselor.id}/role", form)
                else:
                    password = {"password": "hokkaido-yuki-matsuri-2026", "current": PASSWORD}
                    status, _, _ = await a.post(
                        f"/admin/staff/{counselor.id}/reset-password", password
                    )
                    assert status == 200
                running.console.hub.send("case", {"type": "case.opened"})
                tail = await _read_events(stream, 5)
        finally:
            await a.close()
    assert tail.rstrip().endswith('event: session\ndata: {"state": "ended"}')


# -- item 9: student text as it really is -------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["消 え た い", "もう しにたい", "ｼﾈ", "消\u034fえたい", "死.に.た.い", "じ・さ・つ"],
)
async def test_a_keyword_the_urgency_detector_finds_is_marked_in_the_conversation_and_queue(
    running: RunningConsole, client: Callable[[], Browserless], text: str
) -> None:
    counselor = await running.add_staff("counselor")
    case = await seed_case(running.store, urgent=True, keywords=("消えたい",), texts=(text,))
    c = client()
    await c.login(counselor.email)
    _, _, page = await c.get(f"/cases/{case.id}")
    bubble = page.split('<div class="bubble">', 1)[1].split("</div>", 1)[0]
    assert "<mark>" in bubble
    _, _, queue = await c.get("/queue")
    row = queue.split(f'data-case-id="{case.id}"', 1)[1].split("</tr>", 1)[0]
    assert "<mark>" in row.split('class="preview"', 1)[1]


async def test_a_risk_phrase_with_a_direction_override_is_shown_with_the_override_visible(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    counselor = await running.add_staff("counselor")
    text = "もう\u202eいたに死\u202c"
    risk = {"category": "自殺念慮", "term": "死にたい", "match": "\u202eいたに死\u202c"}
    case = await seed_case(running.store, urgent=True, texts=(text,), risks=[risk])
    c = client()
    await c.login(counselor.email)
    _, _, page = await c.get(f"/cases/{case.id}")
    risks = page.split('id="risks"', 1)[1].split("</span>\n", 1)[0]
    assert "\u202e" not in page
    assert "[U+202E]" in risks
    assert "\u202c" not in page
