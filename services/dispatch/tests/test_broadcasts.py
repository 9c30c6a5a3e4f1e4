"""Broadcasts: every registered user once, in chunks of 500, resumable after a crash, within
the month's quota, and the scheduled announcements once across replicas."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from soudan_dispatch.broadcasts import BROADCASTS, CHUNKS, PROGRESS, Broadcaster
from soudan_dispatch.line import LineClient, LineResult, TokenSource
from soudan_dispatch.quota import BUDGET
from soudan_dispatch.schedule import SCHEDULE, Scheduler, due_announcements
from soudan_dispatch.sending import Backoff
from soudan_fakeline import FakeLineServer, new_user_id
from soudan_shared.bus import Bus
from soudan_shared.config import HoursConfig, SoudanConfig, load_config
from soudan_shared.config_store import ConfigSource, save_override
from soudan_shared.contracts import Message, StartBroadcast, utcnow
from soudan_shared.fact_types import (
    BROADCAST_CHUNK_SENT,
    BROADCAST_FINISHED,
    BROADCAST_REFUSED,
    BROADCAST_STARTED,
    LINE_QUOTA_READ,
)
from soudan_shared.facts import Facts
from soudan_shared.hours import Hours
from soudan_shared.records import USERS
from soudan_shared.testing.waiting import wait_until

from .conftest import Dispatch, FactLog, running_dispatch

CONFIG_DIR = Path(__file__).resolve().parents[3] / "deploy" / "config"


async def _users(db: Any, n: int, **fields: Any) -> list[str]:
    ids = [new_user_id() for _ in range(n)]
    now = utcnow()
    docs = [
        {"_id": i, "registered": True, "followed_at": now, "eligible": True, **fields} for i in ids
    ]
    if docs:
        await db[USERS].insert_many(docs)
    return ids


def _broadcast(**fields: Any) -> StartBroadcast:
    values: dict[str, Any] = {"broadcast_id": f"b-{new_user_id()[1:13]}", "texts": ["お知らせ"]}
    values.update(fields)
    return StartBroadcast(**values)


class _Collect:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def publish(self, message: Message, *, timeout: float | None = None) -> None:
        self.messages.append(message)


def _counts(line: FakeLineServer) -> Counter[str]:
    return Counter(d.user_id for d in line.fake.deliveries)


# -- through the broker ---------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_a_broadcast_reaches_every_registered_user_once_in_chunks_of_500(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog, db: Any
) -> None:
    registered = await _users(db, 1234)
    await _users(db, 7, registered=False)
    command = _broadcast()
    await publisher.publish(command)
    finished = await wait_until(lambda: facts.of(BROADCAST_FINISHED), timeout=20)
    assert finished[0].data == {
        "broadcast_id": command.broadcast_id,
        "recipients": 1234,
        "failures": 0,
        "method": "multicast",
    }
    assert _counts(line) == dict.fromkeys(registered, 1)
    sizes = sorted(r.recipients for r in line.fake.requests_to("multicast"))
    assert sizes == [234, 500, 500]
    keys = {r.retry_key for r in line.fake.requests_to("multicast")}
    assert len(keys) == 3
    assert None not in keys
    [started] = facts.of(BROADCAST_STARTED)
    assert started.data["planned"] == 1234
    await wait_until(lambda: len(facts.of(BROADCAST_CHUNK_SENT)) == 3, timeout=5)
    # Delivered again (a redelivery): nothing more is sent.
    await publisher.publish(command)
    await wait_until(lambda: len(facts.of(BROADCAST_FINISHED)) == 2, timeout=10)
    assert len(line.fake.requests_to("multicast")) == 3


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_the_target_group_leaves_out_only_those_known_to_be_outside_it(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog, db: Any
) -> None:
    inside = await _users(db, 3, eligible=True)
    unknown = await _users(db, 2, eligible=None)
    await _users(db, 4, eligible=False)
    await publisher.publish(_broadcast(audience="target_group"))
    finished = await wait_until(lambda: facts.of(BROADCAST_FINISHED), timeout=20)
    assert finished[0].data["recipients"] == 5
    assert set(_counts(line)) == set(inside + unknown)


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_lines_broadcast_endpoint_is_refused_for_the_target_group_in_words_an_admin_reads(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog, db: Any
) -> None:
    await _users(db, 3, eligible=True)
    await publisher.publish(_broadcast(audience="target_group", method="broadcast"))
    [refused] = await wait_until(lambda: facts.of(BROADCAST_REFUSED), timeout=20)
    assert "友だち全員に届く" in refused.data["reason"]
    assert line.fake.requests_to("broadcast") == []
    assert line.fake.requests_to("multicast") == []


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_a_broadcast_over_the_months_quota_is_refused_unless_forced(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog, db: Any
) -> None:
    await _users(db, 600)
    line.fake.quota_limit = 1000
    line.fake.consumption = 500
    command = _broadcast()
    await publisher.publish(command)
    [refused] = await wait_until(lambda: facts.of(BROADCAST_REFUSED), timeout=20)
    assert "より多いため送りませんでした" in refused.data["reason"]  # shown in the console
    assert "600" in refused.data["reason"]
    assert line.fake.requests_to("multicast") == []
    assert (await db[BROADCASTS].find_one({"_id": command.broadcast_id}))["state"] == "refused"
    line.fake.quota_limit = None  # LINE itself would refuse; the fake lets the forced one pass
    await publisher.publish(_broadcast(broadcast_id=command.broadcast_id, force=True))
    finished = await wait_until(lambda: facts.of(BROADCAST_FINISHED), timeout=20)
    assert finished[0].data["recipients"] == 600


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_the_broadcast_endpoint_sends_one_request_to_every_friend(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog, db: Any
) -> None:
    users = await _users(db, 30)
    line.fake.add_followers(users)
    await publisher.publish(_broadcast(method="broadcast"))
    finished = await wait_until(lambda: facts.of(BROADCAST_FINISHED), timeout=20)
    assert finished[0].data["recipients"] == 30
    assert len(line.fake.requests_to("broadcast")) == 1
    assert line.fake.requests_to("multicast") == []
    assert _counts(line) == dict.fromkeys(users, 1)


# -- a crash in the middle -------------------------------------------------------------------


class _Crash(BaseException):
    """The process dies (nothing after this point runs)."""


class _LineThatDiesAfter(LineClient):
    """LINE accepts the ``n``-th multicast, and the process dies before it hears the answer."""

    def __init__(self, *args: Any, n: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n = n
        self.calls = 0

    async def multicast(self, to: Sequence[str], texts: Sequence[str], *, key: str) -> LineResult:
        self.calls += 1
        result = await super().multicast(to, texts, key=key)
        if self.calls == self.n:
            raise _Crash
        return result


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_a_broadcast_that_crashed_mid_way_resumes_without_sending_anyone_twice(
    line: FakeLineServer, db: Any
) -> None:
    users = await _users(db, 2100)  # 5 chunks
    command = _broadcast()
    published = _Collect()
    facts = Facts(published, "dispatch")
    tokens = TokenSource("test-access-token")
    backoff = Backoff(attempts=3, first=0.01, cap=0.05)
    dying = _LineThatDiesAfter(line.url, line.url, tokens, n=3)
    try:
        first = Broadcaster(dying, db, facts, backoff=backoff, concurrency=1)
        with pytest.raises(_Crash):
            await first.handle(command)
    finally:
        await dying.close()
    assert len(line.fake.requests_to("multicast")) == 3
    states = Counter([c["state"] async for c in db[PROGRESS].find({})])
    assert states == {"sent": 2}  # the third went out but was not recorded
    assert await db[CHUNKS].count_documents({}) == 5

    healthy = LineClient(line.url, line.url, tokens)
    try:
        await Broadcaster(healthy, db, facts, backoff=backoff).handle(command)
    finally:
        await healthy.close()
    requests = line.fake.requests_to("multicast")
    assert Counter(r.status for r in requests) == {200: 5, 409: 1}
    [again] = [r for r in requests if r.status == 409]
    assert again.retry_key == requests[2].retry_key  # the chunk that went out before the crash
    assert _counts(line) == dict.fromkeys(users, 1)
    finished = [m for m in published.messages if getattr(m, "type", "") == BROADCAST_FINISHED]
    assert finished[-1].data["recipients"] == 2100  # type: ignore[attr-defined]
    assert (await db[BROADCASTS].find_one({"_id": command.broadcast_id}))["state"] == "finished"


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_a_chunk_that_keeps_failing_stops_the_broadcast_for_a_later_resume(
    line: FakeLineServer, db: Any
) -> None:
    users = await _users(db, 1200)
    command = _broadcast()
    facts = Facts(_Collect(), "dispatch")
    client = LineClient(line.url, line.url, TokenSource("test-access-token"))
    backoff = Backoff(attempts=2, first=0.01, cap=0.02)
    try:
        line.fake.inject("multicast", status=503, times=2)
        with pytest.raises(Exception, match="503"):
            await Broadcaster(client, db, facts, backoff=backoff, concurrency=1).handle(command)
        await Broadcaster(client, db, facts, backoff=backoff).handle(command)
    finally:
        await client.close()
    assert _counts(line) == dict.fromkeys(users, 1)


# -- the schedule ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config() -> SoudanConfig:
    return load_config(CONFIG_DIR)


def _jst(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> datetime:
    from zoneinfo import ZoneInfo

    return datetime(y, m, d, hh, mm, tzinfo=ZoneInfo("Asia/Tokyo"))


@pytest.mark.unit
def test_the_period_notice_is_due_from_its_day_until_the_period_starts(
    config: SoudanConfig,
) -> None:
    period = config.hours.periods[0]
    days = config.messages.broadcast.schedule.period_notice_days_before
    assert days is not None
    day = period.start - timedelta(days=days)
    assert due_announcements(config, _jst(day.year, day.month, day.day, 11, 59)) == []
    [notice] = due_announcements(config, _jst(day.year, day.month, day.day, 12, 0))
    assert notice.template == "period_notice"
    assert "{period}" not in notice.texts[0]
    assert "17:00〜21:00" in notice.texts[0]
    assert period.name in notice.texts[0]
    assert due_announcements(config, _jst(period.start.year, period.start.month, 1, 0, 0)) == []


@pytest.mark.unit
def test_open_now_is_due_at_the_first_opening_of_a_period_until_last_acceptance(
    config: SoudanConfig,
) -> None:
    start: date = config.hours.periods[0].start
    y, m, d = start.year, start.month, start.day
    assert due_announcements(config, _jst(y, m, d, 16, 59)) == []
    [now_open] = due_announcements(config, _jst(y, m, d, 17, 0))
    assert now_open.template == "open_now"
    assert now_open.key.endswith(str(start))
    assert due_announcements(config, _jst(y, m, d, 20, 30)) == []
    nxt = start + timedelta(days=1)
    assert due_announcements(config, _jst(nxt.year, nxt.month, nxt.day, 17, 5)) == []


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_a_scheduled_announcement_is_published_once_across_replicas(
    config: SoudanConfig, db: Any, publisher: Bus
) -> None:
    start = config.hours.periods[0].start
    at = _jst(start.year, start.month, start.day, 17, 1).astimezone(UTC)

    async def get_config() -> SoudanConfig:
        return config

    replicas = [
        Scheduler(publisher, db, get_config, clock=lambda: at, holder=f"replica-{i}")
        for i in range(3)
    ]
    published = [await r.run_once() for r in replicas] + [await replicas[0].run_once()]
    assert sum(len(p) for p in published) == 1
    [marker] = await db[SCHEDULE].find({}).to_list()
    assert marker["template"] == "open_now"


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_open_now_is_not_broadcast_at_17_on_a_day_the_console_closed_at_16_30(
    config: SoudanConfig, db: Any, publisher: Bus, tmp_path: Path
) -> None:
    config_dir = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config_dir)
    messages = yaml.safe_load((config_dir / "messages.yaml").read_text(encoding="utf-8"))
    messages["broadcast"]["schedule"]["open_now"] = "every_session"
    (config_dir / "messages.yaml").write_text(yaml.safe_dump(messages, allow_unicode=True))
    day = config.hours.periods[0].start + timedelta(days=10)
    hours = config.hours.model_dump(mode="json")
    hours["overrides"] = [
        {"date": str(day), "sessions": [{"open": "13:00", "close": "16:30"}], "note": "行事"}
    ]
    await save_override(db, "hours", HoursConfig.model_validate(hours), staff_id="admin")
    source = ConfigSource(config_dir, db)
    moment = _jst(day.year, day.month, day.day, 17, 0)

    scheduler = Scheduler(publisher, db, source.get, clock=lambda: moment.astimezone(UTC))
    assert await scheduler.run_once() == []
    assert Hours((await source.get()).hours).status(moment).accepting is False

    earlier = _jst(day.year, day.month, day.day, 13, 0)
    scheduler.clock = lambda: earlier.astimezone(UTC)
    assert len(await scheduler.run_once()) == 1
    [marker] = await db[SCHEDULE].find({}).to_list()
    assert marker["due_at"] == earlier


@pytest.mark.unit
def test_open_now_follows_a_periods_own_hours_and_skips_its_closed_dates(
    config: SoudanConfig,
) -> None:
    period = config.hours.periods[0]
    hours = config.hours.model_dump(mode="json")
    hours["periods"][0]["weekly"] = {
        day: [{"open": "13:00", "last_acceptance": "15:30", "close": "16:00"}]
        for day in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    }
    hours["closed_dates"] = [
        {"start": str(period.start), "end": str(period.start), "note": "開始日は休み"}
    ]
    changed = config.model_copy(update={"hours": HoursConfig.model_validate(hours)})
    start, second = period.start, period.start + timedelta(days=1)
    assert due_announcements(changed, _jst(start.year, start.month, start.day, 13, 0)) == []
    assert due_announcements(changed, _jst(second.year, second.month, second.day, 17, 0)) == []
    [opening] = due_announcements(changed, _jst(second.year, second.month, second.day, 13, 0))
    assert opening.template == "open_now"
    assert opening.until == _jst(second.year, second.month, second.day, 15, 30)


# -- the reserve kept for conversations ------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_a_broadcast_that_would_eat_the_reserve_is_refused_by_dispatch(
    dispatch_settings: Any, line: FakeLineServer, publisher: Bus, facts: FactLog, db: Any
) -> None:
    await _users(db, 600)
    line.fake.quota_limit = 1000
    line.fake.consumption = 300  # 700 left: enough for 600, but not with 200 kept back
    async with running_dispatch(dispatch_settings(line_monthly_reserve=200)):
        command = _broadcast()
        await publisher.publish(command)
        [refused] = await wait_until(lambda: facts.of(BROADCAST_REFUSED), timeout=20)
    assert "残しておく" in refused.data["reason"]  # shown in the console as it is
    assert "600" in refused.data["reason"]
    assert "200" in refused.data["reason"]
    assert line.fake.requests_to("multicast") == []
    assert line.fake.consumption == 300


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_a_scheduled_broadcast_never_eats_the_default_reserve(
    config: SoudanConfig,
    dispatch: Dispatch,
    line: FakeLineServer,
    publisher: Bus,
    facts: FactLog,
    db: Any,
) -> None:
    await _users(db, 50)
    line.fake.quota_limit = 500
    line.fake.consumption = 420  # 80 left, 50 of them the default reserve (a tenth of 500)
    start = config.hours.periods[0].start
    at = _jst(start.year, start.month, start.day, 17, 1).astimezone(UTC)

    async def get_config() -> SoudanConfig:
        return config

    [published] = await Scheduler(publisher, db, get_config, clock=lambda: at).run_once()
    [refused] = await wait_until(lambda: facts.of(BROADCAST_REFUSED), timeout=20)
    assert refused.data["broadcast_id"] == published
    assert "残しておく" in refused.data["reason"]  # shown in the console as it is
    assert line.fake.requests_to("multicast") == []
    assert facts.of(BROADCAST_FINISHED) == []


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_dispatch_reads_the_budget_again_after_a_broadcast_and_shows_it_as_a_gauge(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog, db: Any
) -> None:
    await _users(db, 30)
    line.fake.quota_limit = 1000
    line.fake.consumption = 100
    await publisher.publish(_broadcast())
    await wait_until(lambda: facts.of(BROADCAST_FINISHED), timeout=20)
    readings = await wait_until(
        lambda: [f for f in facts.of(LINE_QUOTA_READ) if f.data["used"] == 130], timeout=10
    )
    assert readings[-1].data == {"limit": 1000, "used": 130, "remaining": 870, "reserve": 100}
    stored = await db[BUDGET].find_one({"_id": "current"})
    assert (stored["used"], stored["remaining"], stored["reserve"]) == (130, 870, 100)
    async with aiohttp.ClientSession() as http, http.get(dispatch.url + "/metrics") as response:
        metrics = await response.text()
    assert 'soudan_line_quota_messages{kind="used"} 130.0' in metrics
    assert 'soudan_line_quota_messages{kind="remaining"} 870.0' in metrics
