"""Channel access tokens v2.1: issued with the assertion signing key, shared through the store,
renewed before expiry with the old one revoked."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from soudan_dispatch.line import LineClient, LineError, TokenSource
from soudan_dispatch.tokens import TOKENS, TokenIssuer
from soudan_fakeline import FakeLineServer, new_user_id
from soudan_shared.contracts import Message, utcnow
from soudan_shared.fact_types import TOKEN_ISSUED, TOKEN_REVOKED
from soudan_shared.facts import Facts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class _Collect:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def publish(self, message: Message, *, timeout: float | None = None) -> None:
        self.messages.append(message)

    def types(self) -> list[str]:
        return [m.type for m in self.messages]


@pytest.fixture(scope="module")
def key_pair() -> tuple[str, Any]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private)
    return jwk, private.public_key()


def _issuer(
    line: FakeLineServer, db: Any, tokens: TokenSource, jwk: str, collect: _Collect, **kw: Any
) -> TokenIssuer:
    return TokenIssuer(
        base_url=line.url,
        channel_id=line.fake.channel_id,
        channel_secret=line.fake.channel_secret,
        signing_key_jwk=jwk,
        key_id="kid-1",
        store_db=db,
        facts=Facts(collect, "dispatch"),
        tokens=tokens,
        **kw,
    )


async def test_dispatch_issues_its_own_token_and_renews_it_revoking_the_old_one(
    line: FakeLineServer, db: Any, key_pair: tuple[str, Any]
) -> None:
    jwk, public = key_pair

    def verify(assertion: str) -> bool:
        header = jwt.get_unverified_header(assertion)
        jwt.decode(assertion, public, algorithms=["RS256"], audience="https://api.line.me/")
        return header.get("kid") == "kid-1"

    line.fake.assertion_verifier = verify
    line.fake.access_tokens.clear()  # no static token is accepted
    collect = _Collect()
    tokens = TokenSource("")
    issuer = _issuer(line, db, tokens, jwk, collect)
    client = LineClient(line.url, line.url, tokens, timeout=2)
    user = new_user_id()
    try:
        await issuer.ensure()
        first = tokens.current()
        assert first
        assert line.fake.token_valid(first)
        await client.push(user, ["一"], key=str(uuid.uuid4()))

        # A second replica uses the stored token instead of issuing another.
        replica_tokens = TokenSource("")
        replica = _issuer(line, db, replica_tokens, jwk, _Collect())
        await replica.ensure()
        assert replica_tokens.current() == first
        await replica.close()

        # Near its expiry: renewed, the old one revoked.
        later = utcnow() + timedelta(days=25)
        issuer.clock = lambda: later
        await issuer.ensure()
        second = tokens.current()
        assert second != first
        assert not line.fake.token_valid(first)
        await client.push(user, ["二"], key=str(uuid.uuid4()))
    finally:
        await issuer.close()
        await client.close()
    assert line.fake.texts(user) == ["一", "二"]
    assert collect.types() == [TOKEN_ISSUED, TOKEN_ISSUED, TOKEN_REVOKED]
    issued = collect.messages[0].data
    assert set(issued) == {"key_id", "issued_at", "expires_at"}
    assert first not in json.dumps([m.data for m in collect.messages])
    stored = await db[TOKENS].find_one({})
    assert stored["access_token"] == second


async def test_an_assertion_line_cannot_verify_is_refused(
    line: FakeLineServer, db: Any, key_pair: tuple[str, Any]
) -> None:
    line.fake.assertion_verifier = lambda assertion: False
    issuer = _issuer(line, db, TokenSource(""), key_pair[0], _Collect())
    try:
        with pytest.raises(Exception, match="refused"):
            await issuer.ensure()
    finally:
        await issuer.close()


@pytest.mark.unit
async def test_a_send_waits_for_the_first_token_and_fails_transiently_without_one(
    line: FakeLineServer,
) -> None:
    tokens = TokenSource("", wait=0.2)
    client = LineClient(line.url, line.url, tokens, timeout=2)
    try:
        with pytest.raises(LineError) as raised:
            await client.push(new_user_id(), ["x"], key=str(uuid.uuid4()))
        assert raised.value.transient
    finally:
        await client.close()


async def test_dispatch_configured_with_a_signing_key_sends_with_the_token_it_issued(
    dispatch_settings: Any,
    line: FakeLineServer,
    key_pair: tuple[str, Any],
    facts: Any,
    publisher: Any,
) -> None:
    from soudan_shared.contracts import SendText
    from soudan_shared.fact_types import REPLY_SENT
    from soudan_shared.testing.waiting import wait_until

    from .conftest import running_dispatch

    line.fake.access_tokens.clear()
    settings = dispatch_settings(
        line_channel_access_token="",
        line_channel_id=line.fake.channel_id,
        line_channel_secret=line.fake.channel_secret,
        line_assertion_signing_key=key_pair[0],
        line_assertion_key_id="kid-1",
    )
    assert settings.issues_tokens
    user = new_user_id()
    async with running_dispatch(settings):
        command = SendText(to=user, texts=["発行したトークンで"], purpose="other")
        await publisher.publish(command)
        await wait_until(lambda: facts.of(REPLY_SENT), timeout=15, message="sent")
        await wait_until(lambda: facts.of(TOKEN_ISSUED), timeout=10, message="issued")
    assert line.fake.texts(user) == ["発行したトークンで"]
    assert len(line.fake.issued_tokens) == 1
