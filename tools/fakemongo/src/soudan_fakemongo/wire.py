"""MongoDB wire-protocol framing: the messages PyMongo 4 sends, and the replies it reads.

Requests: OP_MSG (2013) with a kind-0 body and kind-1 document sequences, and the legacy
OP_QUERY (2004) that carries PyMongo's first handshake (``isMaster`` on ``admin.$cmd``).
Replies: OP_MSG to OP_MSG, OP_REPLY (1) to OP_QUERY. No compression (OP_COMPRESSED is never
offered in the handshake, so a client that sends it anyway gets its connection closed).

Anything that does not parse raises :class:`ProtocolError`; the server then closes that
connection only, as mongod does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013

HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode
MAX_MESSAGE_SIZE = 48_000_000
MAX_BSON_SIZE = 16 * 1024 * 1024

CHECKSUM_PRESENT = 1 << 0
MORE_TO_COME = 1 << 1
EXHAUST_ALLOWED = 1 << 16
_REQUIRED_FLAG_BITS = 0xFFFF  # bits 0-15: a receiver must understand them or fail
_KNOWN_FLAGS = CHECKSUM_PRESENT | MORE_TO_COME | EXHAUST_ALLOWED

QUERY_FAILURE = 1 << 1  # OP_REPLY responseFlags

CODEC: CodecOptions[dict[str, Any]] = CodecOptions(
    document_class=dict, tz_aware=True, tzinfo=bson.tz_util.utc
)


class ProtocolError(Exception):
    """A frame that cannot be read; the connection it came on is closed."""


@dataclass
class Request:
    """One command read off the wire, with its sequences folded into the body."""

    request_id: int
    op_code: int
    body: dict[str, Any]
    database: str | None = None  # from OP_QUERY's namespace; OP_MSG says ``$db`` in the body
    more_to_come: bool = False  # the client wants no reply (unacknowledged write)
    legacy_find: bool = False  # an OP_QUERY on a collection, not on ``<db>.$cmd``
    sequences: list[str] = field(default_factory=list)


def parse_header(data: bytes) -> tuple[int, int, int, int]:
    length, request_id, response_to, op_code = HEADER.unpack(data)
    if length <= HEADER.size or length > MAX_MESSAGE_SIZE:
        raise ProtocolError(f"message length {length} out of range")
    return length, request_id, response_to, op_code


def _decode(data: bytes | memoryview) -> dict[str, Any]:
    try:
        return bson.decode(data, codec_options=CODEC)
    except Exception as exc:  # bson raises several types for malformed input
        raise ProtocolError(f"invalid BSON: {type(exc).__name__}") from exc


def _bson_length(data: bytes, pos: int) -> int:
    if pos + 4 > len(data):
        raise ProtocolError("truncated BSON length")
    (size,) = struct.unpack_from("<i", data, pos)
    if size < 5 or pos + size > len(data):
        raise ProtocolError("BSON document overruns its section")
    return int(size)


def _cstring(data: bytes, pos: int, end: int) -> tuple[str, int]:
    stop = data.find(b"\x00", pos, end)
    if stop < 0:
        raise ProtocolError("unterminated C string")
    try:
        return data[pos:stop].decode("utf-8"), stop + 1
    except UnicodeDecodeError as exc:
        raise ProtocolError("C string is not UTF-8") from exc


def parse_message(request_id: int, op_code: int, payload: bytes) -> Request:
    """The request in ``payload`` (the message after its 16-byte header)."""
    if op_code == OP_MSG:
        return _parse_msg(request_id, payload)
    if op_code == OP_QUERY:
        return _parse_query(request_id, payload)
    raise ProtocolError(f"unsupported opCode {op_code}")


def _parse_msg(request_id: int, data: bytes) -> Request:
    if len(data) < 5:
        raise ProtocolError("OP_MSG too short")
    (flags,) = struct.unpack_from("<I", data, 0)
    if flags & _REQUIRED_FLAG_BITS & ~_KNOWN_FLAGS:
        raise ProtocolError(f"OP_MSG has unknown required flag bits {flags:#x}")
    # The CRC-32C is not checked: this tool runs over loopback, and PyMongo never sends one.
    end = len(data) - 4 if flags & CHECKSUM_PRESENT else len(data)
    pos = 4
    body: dict[str, Any] | None = None
    sequences: dict[str, list[dict[str, Any]]] = {}
    while pos < end:
        kind = data[pos]
        pos += 1
        if kind == 0:
            if body is not None:
                raise ProtocolError("OP_MSG with two body sections")
            size = _bson_length(data, pos)
            if pos + size > end:
                raise ProtocolError("body section overruns the message")
            body = _decode(memoryview(data)[pos : pos + size])
            pos += size
        elif kind == 1:
            if pos + 4 > end:
                raise ProtocolError("truncated document sequence")
            (size,) = struct.unpack_from("<i", data, pos)
            section_end = pos + size
            if size < 5 or section_end > end:
                raise ProtocolError("document sequence overruns the message")
            identifier, cursor = _cstring(data, pos + 4, section_end)
            documents: list[dict[str, Any]] = []
            while cursor < section_end:
                doc_size = _bson_length(data, cursor)
                if cursor + doc_size > section_end:
                    raise ProtocolError("document overruns its sequence")
                documents.append(_decode(memoryview(data)[cursor : cursor + doc_size]))
                cursor += doc_size
            if identifier in sequences:
                raise ProtocolError("OP_MSG repeats a document sequence")
            sequences[identifier] = documents
            pos = section_end
        else:
            raise ProtocolError(f"OP_MSG section kind {kind} unknown")
    if body is None:
        raise ProtocolError("OP_MSG without a body section")
    for identifier, documents in sequences.items():
        if identifier in body:
            raise ProtocolError(f"{identifier!r} both in the body and as a sequence")
        body[identifier] = documents
    return Request(
        request_id,
        OP_MSG,
        body,
        more_to_come=bool(flags & MORE_TO_COME),
        sequences=list(sequences),
    )


def _parse_query(request_id: int, data: bytes) -> Request:
    if len(data) < 4:
        raise ProtocolError("OP_QUERY too short")
    namespace, pos = _cstring(data, 4, len(data))
    pos += 8  # numberToSkip, numberToReturn
    size = _bson_length(data, pos)
    query = _decode(memoryview(data)[pos : pos + size])
    database, _, collection = namespace.partition(".")
    if not database or not collection:
        raise ProtocolError("OP_QUERY namespace without a collection")
    if collection != "$cmd":
        return Request(request_id, OP_QUERY, query, database=database, legacy_find=True)
    # Drivers may wrap a command as {$query: {...}, $readPreference: ...}.
    if "$query" in query and isinstance(query["$query"], dict):
        query = query["$query"]
    return Request(request_id, OP_QUERY, query, database=database)


_request_ids = iter(range(1, 2**31))


def _frame(response_to: int, op_code: int, payload: bytes) -> bytes:
    header = HEADER.pack(HEADER.size + len(payload), next(_request_ids), response_to, op_code)
    return header + payload


def encode(document: dict[str, Any] | RawBSONDocument) -> bytes:
    if isinstance(document, RawBSONDocument):
        return bytes(document.raw)
    return bson.encode(document, codec_options=CODEC)


def msg_reply(response_to: int, body: dict[str, Any]) -> bytes:
    """An OP_MSG reply: flags 0, one body section."""
    return _frame(response_to, OP_MSG, b"\x00\x00\x00\x00\x00" + encode(body))


def op_reply(response_to: int, document: dict[str, Any], *, failure: bool = False) -> bytes:
    """An OP_REPLY with one document (to an OP_QUERY)."""
    flags = QUERY_FAILURE if failure else 0
    head = struct.pack("<iqii", flags, 0, 0, 1)
    return _frame(response_to, OP_REPLY, head + encode(document))
