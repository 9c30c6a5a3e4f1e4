"""Channel access tokens v2.1 (運営要領 第7): issued by dispatch, renewed before they expire.

Without an assertion signing key, dispatch uses the static token of its settings (rotated by
hand: replace ``LINE_CHANNEL_ACCESS_TOKEN_FILE`` and it is picked up without a restart). With
``LINE_CHANNEL_ID``, ``LINE_ASSERTION_SIGNING_KEY`` (the private key, as the JWK JSON LINE's
console was given the public half of), ``LINE_ASSERTION_KEY_ID`` (the ``kid`` LINE assigned to
it) and ``LINE_CHANNEL_SECRET`` (needed to revoke), dispatch issues its own tokens:

- a JWT assertion (RS256; ``iss`` = ``sub`` = the channel id, ``aud`` https://api.line.me/, valid
  30 minutes, ``token_exp`` the token's lifetime) is exchanged at ``/oauth2/v2.1/token``;
- the token is kept in the store (:data:`TOKENS`, one document), so every replica and every
  restart uses the same one instead of piling up tokens (LINE allows 30 per channel);
- ``renew_before`` its expiry one replica (a lease) issues the next one, stores it, and revokes
  the old one (``/oauth2/v2.1/revoke``); the others pick the new one up on their next check or
  at their first 401;
- facts ``security.token_issued`` ({key_id, issued_at, expires_at}) and
  ``security.token_revoked`` ({key_id, reason}) give the monthly report the credential's age.

The token document holds a live credential: the store is authenticated and never exposed, and
the token never reaches a log or a fact.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import jwt
import structlog
from linebot.v3.oauth import (  # type: ignore[import-untyped]
    ApiException,
    AsyncApiClient,
    AsyncChannelAccessToken,
    Configuration,
)
from soudan_shared.contracts import utcnow
from soudan_shared.fact_types import TOKEN_ISSUED, TOKEN_REVOKED
from soudan_shared.facts import Facts
from soudan_shared.records import acquire_lease, release_lease

from soudan_dispatch.line import TokenSource

log = structlog.get_logger(__name__)

TOKENS = "dispatch_tokens"
CURRENT = "line_channel_access_token"
LEASE = "line-token-renewal"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_LIFETIME = timedelta(days=30)


class TokenIssueError(Exception):
    pass


def assertion(
    channel_id: str,
    signing_key_jwk: str,
    key_id: str,
    lifetime: timedelta,
    *,
    now: float | None = None,
) -> str:
    """The signed JWT LINE exchanges for a v2.1 token."""
    key = jwt.algorithms.RSAAlgorithm.from_jwk(signing_key_jwk)
    issued = int(now if now is not None else time.time())
    claims = {
        "iss": channel_id,
        "sub": channel_id,
        "aud": "https://api.line.me/",
        "exp": issued + 30 * 60,
        "token_exp": int(min(lifetime, MAX_LIFETIME).total_seconds()),
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": key_id})  # type: ignore[arg-type]


class TokenIssuer:
    def __init__(
        self,
        *,
        base_url: str,
        channel_id: str,
        channel_secret: str,
        signing_key_jwk: str,
        key_id: str,
        store_db: Any,
        facts: Facts,
        tokens: TokenSource,
        lifetime: timedelta = MAX_LIFETIME,
        renew_before: timedelta = timedelta(days=7),
        check_every: float = 60.0,
        timeout: float = 10.0,
        clock: Callable[[], datetime] = utcnow,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.ready = ready
        self.channel_id = channel_id
        self.channel_secret = channel_secret
        self.signing_key_jwk = signing_key_jwk
        self.key_id = key_id
        self.tokens_col = store_db[TOKENS]
        self.db = store_db
        self.facts = facts
        self.tokens = tokens
        self.lifetime = min(lifetime, MAX_LIFETIME)
        self.renew_before = renew_before
        self.check_every = check_every
        self.timeout = timeout
        self.clock = clock
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._client = AsyncApiClient(Configuration(host=base_url.rstrip("/")))
        self._api = AsyncChannelAccessToken(self._client)
        tokens.loader = self.stored_token

    async def close(self) -> None:
        await self._client.close()

    async def stored_token(self) -> str | None:
        doc = await self.tokens_col.find_one({"_id": CURRENT})
        if doc is None or doc["expires_at"] <= self.clock():
            return None
        return str(doc["access_token"])

    async def ensure(self) -> None:
        """Use the stored token; issue one if there is none or it is due for renewal."""
        doc = await self.tokens_col.find_one({"_id": CURRENT})
        now = self.clock()
        if doc is not None and doc["expires_at"] - now > self.renew_before:
            self.tokens.set(doc["access_token"])
            return
        if not await acquire_lease(self.db, LEASE, self.holder, timedelta(minutes=2)):
            if doc is not None and doc["expires_at"] > now:
                self.tokens.set(doc["access_token"])
            return
        try:
            await self._renew(doc)
        finally:
            await release_lease(self.db, LEASE, self.holder)

    async def _renew(self, old: dict[str, Any] | None) -> None:
        signed = assertion(self.channel_id, self.signing_key_jwk, self.key_id, self.lifetime)
        try:
            issued = await self._api.issue_channel_token_by_jwt(
                "client_credentials", JWT_BEARER, signed, _request_timeout=self.timeout
            )
        except ApiException as exc:
            raise TokenIssueError(f"LINE refused to issue a token: {exc.status}") from None
        now = self.clock()
        doc = {
            "access_token": issued.access_token,
            "key_id": issued.key_id,
            "issued_at": now,
            "expires_at": now + timedelta(seconds=int(issued.expires_in)),
        }
        await self.tokens_col.update_one({"_id": CURRENT}, {"$set": doc}, upsert=True)
        self.tokens.set(issued.access_token)
        log.info("line_token_issued", key_id=issued.key_id, expires_at=doc["expires_at"])
        await self._ready()
        await self.facts.publish(
            TOKEN_ISSUED,
            {
                "key_id": issued.key_id,
                "issued_at": now.isoformat(),
                "expires_at": doc["expires_at"].isoformat(),
            },
            cause=f"token:{issued.key_id}",
        )
        if old is not None:
            await self._revoke(old, reason="renewed")

    async def _revoke(self, old: dict[str, Any], *, reason: str) -> None:
        try:
            await self._api.revoke_channel_token_by_jwt(
                self.channel_id,
                self.channel_secret,
                old["access_token"],
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            log.warning("line_token_revoke_failed", key_id=old.get("key_id"), status=exc.status)
            return
        log.info("line_token_revoked", key_id=old.get("key_id"), reason=reason)
        await self._ready()
        await self.facts.publish(
            TOKEN_REVOKED,
            {"key_id": old.get("key_id"), "reason": reason},
            cause=f"token-revoked:{old.get('key_id')}",
        )

    async def _ready(self) -> None:
        if self.ready is not None:
            await asyncio.wait_for(self.ready(), 60)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.ensure()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("line_token_check_failed", error=str(exc)[:200])
            await asyncio.sleep(self.check_every)
