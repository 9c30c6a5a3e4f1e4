"""The asyncio server: connections, framing, and one :class:`Backend` for all of them.

Commands run one at a time on the event loop (mongomock is synchronous and not made for
threads), which also makes each command atomic with respect to the others, as a single
document write is in MongoDB. A frame that cannot be read closes its connection and nothing
else; a command that fails is answered ``ok: 0``. Nothing here logs document contents: a log
line names the command, the exception type and where it was raised, never its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import traceback
from collections.abc import AsyncIterator
from typing import Any

import structlog

from soudan_fakemongo.commands import (
    INTERNAL_ERROR,
    Backend,
    CommandError,
    as_command_error,
    message_of,
)
from soudan_fakemongo.wire import (
    HEADER,
    OP_MSG,
    ProtocolError,
    Request,
    msg_reply,
    op_reply,
    parse_header,
    parse_message,
)

log = structlog.get_logger("soudan_fakemongo")

WARNING = (
    "soudan-fakemongo is NOT MongoDB: mongomock behind the MongoDB wire protocol, in memory, "
    "lost at exit, without transactions, durability, authentication or TLS; for Soudan's tests, "
    "development and benchmarks only, never for real consultations"
)


class FakeMongoServer:
    """A MongoDB wire-protocol server on ``host:port`` (0: a free port) in front of mongomock."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.backend = Backend()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._connection_ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        connection_id = next(self._connection_ids)
        try:
            await self._converse(connection_id, reader, writer)
        except ProtocolError as exc:
            log.warning("fakemongo_bad_frame", connection=connection_id, reason=str(exc))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _converse(
        self, connection_id: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            header = await reader.readexactly(HEADER.size)
            length, request_id, _, op_code = parse_header(header)
            payload = await reader.readexactly(length - HEADER.size)
            request = parse_message(request_id, op_code, payload)
            reply = self._answer(connection_id, request)
            if reply is not None:
                writer.write(reply)
                await writer.drain()

    def _answer(self, connection_id: int, request: Request) -> bytes | None:
        if request.legacy_find:
            return op_reply(
                request.request_id,
                {"$err": "OP_QUERY is only supported for commands", "code": 352, "ok": 0.0},
                failure=True,
            )
        body = request.body
        database = request.database if request.op_code != OP_MSG else body.get("$db")
        if not isinstance(database, str) or not database:
            document = CommandError(
                40571, "Location40571", "OP_MSG requests require a $db argument"
            ).reply()
        else:
            document = self._run(database, body, connection_id)
        if request.more_to_come:
            return None
        try:
            return self._frame(request, document)
        except Exception as exc:  # a value mongomock produced that BSON cannot carry
            log.warning("fakemongo_reply_not_encodable", error=type(exc).__name__)
            error = CommandError(2, "BadValue", f"reply not encodable: {message_of(exc)}")
            return self._frame(request, error.reply())

    @staticmethod
    def _frame(request: Request, document: dict[str, Any]) -> bytes:
        if request.op_code == OP_MSG:
            return msg_reply(request.request_id, document)
        return op_reply(request.request_id, document)

    def _run(self, database: str, body: dict[str, Any], connection_id: int) -> dict[str, Any]:
        try:
            return self.backend.run(database, body, connection_id)
        except CommandError as exc:
            return exc.reply()
        except Exception as exc:
            error = as_command_error(exc)
            if error.code == INTERNAL_ERROR:  # not the input's fault: worth a look
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                log.warning(
                    "fakemongo_command_failed",
                    command=next(iter(body), ""),
                    error=type(exc).__name__,
                    where=f"{frame.filename}:{frame.lineno}",
                )
            return error.reply()


@contextlib.asynccontextmanager
async def running_fakemongo(
    host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[FakeMongoServer]:
    """A :class:`FakeMongoServer` serving in the running loop for the block (tests)."""
    server = FakeMongoServer(host, port)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
