"""The month's figures, computed in MongoDB from ``events`` alone.

Four aggregations, each one pass over the facts it needs:

- **month**: the facts filed under the month (``jst.month``, stored by the recorder), grouped
  once by type and the few fields each type is counted by (:data:`_DIMENSIONS`); every table is
  then a small regrouping of those rows, side by side in one ``$facet``.
- **cases**: durations need facts of one case together (opened, first counselor reply, first
  claim, close, urgent flag), and a case opened late on the last day may be answered in the next
  month; so the follow-up facts of the month and the :data:`FOLLOW_UP_DAYS` after it are grouped
  by ``case_id`` and the differences taken per case.
- **scope**: a case's school type (and so 対象外) can change after it opens, when the student
  answers the question later; the answers of the month and after are matched to each case.
- **state**: what holds at month end whatever month it began in (who is registered, each staff
  member's password age and second factor, the LINE token), from every fact before the end.

Only operators that MongoDB and mongomock (the in-process fake used in tests) agree on: no
``$dateToString`` with a timezone (the recorder stores the Tokyo day and hour), no
``$percentile``/``$median`` (percentiles come from a sorted ``$push`` picked by rank), no
``$setWindowFields``, no single-array ``$min``. MongoDB answers ``$group`` on nothing with no
document and mongomock with one of zeros: readers below accept both.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from soudan_shared import fact_types as ft

from soudan_reporting.figures import (
    COUNSELOR_REPLY,
    NO_SCHOOL_TYPE,
    PERCENTILES,
    AuditRow,
    BroadcastRow,
    Durations,
    Figures,
    StaffChange,
    StaffRow,
    TokenState,
    bucket_bound,
    per_bucket,
    send_kind,
)
from soudan_reporting.month import Month

FOLLOW_UP_DAYS = 31
DAY_MS = 86_400_000

# The LINE channel token: rotated by hand (line_token_rotated) or issued and revoked by dispatch
# itself (v2.1 tokens, renewed before they expire); without any token fact the report says the
# token is static with an unknown issue date.
TOKEN_ISSUE_TYPES = (ft.LINE_TOKEN_ROTATED, ft.TOKEN_ISSUED)


async def compute_figures(events: Any, month: Month) -> Figures:
    monthly = await _single(events, month_pipeline(month))
    cases = await _single(events, case_pipeline(month))
    state = await _single(events, state_pipeline(month))
    scope = await _single(events, scope_pipeline(month))
    return _figures(month, monthly, cases, state, scope)


async def has_facts(events: Any, month: Month) -> bool:
    """Whether any fact is filed under ``month`` (a month before the first has none)."""
    return await events.find_one({"jst.month": str(month)}, {"_id": 1}) is not None


async def _single(events: Any, pipeline: list[dict[str, Any]]) -> dict[str, Any]:
    cursor = await events.aggregate(pipeline, allowDiskUse=True)
    docs: list[dict[str, Any]] = await cursor.to_list()
    return docs[0] if docs else {}


# -- expression helpers -----------------------------------------------------------------------


def _is(fact_type: str) -> dict[str, Any]:
    return {"$eq": ["$type", fact_type]}


def _when(condition: Any, value: Any, otherwise: Any = None) -> dict[str, Any]:
    return {"$cond": [condition, value, otherwise]}


def _rank_index(percent: int) -> dict[str, Any]:
    """0-based index of the nearest-rank percentile in the sorted array ``$ds``."""
    size = {"$size": "$ds"}
    rank = {"$floor": {"$divide": [{"$add": [{"$multiply": [percent, size]}, 99]}, 100]}}
    return {"$subtract": [{"$toInt": rank}, 1]}


def _percentiles(difference: dict[str, Any]) -> list[dict[str, Any]]:
    """Stages turning documents into ``{n, p50, p90}`` of ``difference`` (milliseconds)."""
    picks = {f"p{p}": {"$arrayElemAt": ["$ds", _rank_index(p)]} for p in PERCENTILES}
    return [
        {"$project": {"d": difference}},
        {"$sort": {"d": 1}},
        {"$group": {"_id": None, "ds": {"$push": "$d"}}},
        {"$project": {"_id": 0, "n": {"$size": "$ds"}, **picks}},
    ]


# -- the month's facts ------------------------------------------------------------------------


# The dimensions each fact type is counted by. The month's facts are grouped once by type and
# these fields (one pass over the month); every table is then a small regrouping of those rows.
_DIMENSIONS: dict[str, dict[str, Any]] = {
    ft.CASE_OPENED: {
        "day": "$jst.day",
        "weekday": "$jst.weekday",
        "hour": "$jst.hour",
        "in_hours": "$data.in_hours",
        "urgent": "$data.urgent",
    },
    ft.LINE_FOLLOWED: {"unblocked": "$data.unblocked"},
    ft.SCHOOL_TYPE_SET: {"school": "$data.school_type"},
    # A close before the attributes were recorded carries one ``category`` and no grade, gender
    # or hand-over (不明, 不明, not handed over). Its category is taken as it is, a scalar that
    # ``$unwind`` reads as a list of one: mongomock 4.3.0 does not evaluate the field path in an
    # array literal (``["$data.category"]`` stays that text).
    ft.CASE_CLOSED: {
        "categories": {"$ifNull": ["$data.categories", "$data.category"]},
        "grade": "$data.grade",
        "gender": "$data.gender",
        "handed_over": "$data.handed_over",
        "staff": "$data.staff_id",
    },
    ft.REPLY_SENT: {"purpose": "$data.purpose", "method": "$data.method", "note": "$data.note"},
    ft.REPLY_FAILED: {"purpose": "$data.purpose"},
    ft.LINE_QUOTA_READ: {"at": "$at", "limit": "$data.limit", "used": "$data.used"},
    # one row per flag (few): the first flag of a case decides "out of hours"
    ft.CASE_FLAGGED_URGENT: {
        "id": "$_id",
        "at": "$at",
        "case": "$data.case_id",
        "in_hours": "$data.in_hours",
        "keywords": "$data.keywords",
        "risks": "$data.risks",
    },
    ft.EMERGENCY_RAISED: {"type": "$data.type"},
    ft.CHECKIN_ANSWERED: {"choice": "$data.choice"},
    ft.CHECKIN_SKIPPED: {"reason": "$data.reason"},
    ft.EMERGENCY_CONTACT: {"agency": "$data.agency", "result": "$data.result"},
    ft.BROADCAST_STARTED: {
        "broadcast": "$data.broadcast_id",
        "day": "$jst.day",
        "audience": "$data.audience",
    },
    ft.BROADCAST_FINISHED: {"broadcast": "$data.broadcast_id"},
    ft.SIGNATURE_REJECTED: {"reason": "$data.reason"},
    ft.LOGIN_SUCCEEDED: {"second_factor": "$data.second_factor"},
    ft.LOGIN_FAILED: {"reason": "$data.reason"},
    ft.LOCKED_OUT: {"staff": "$data.staff_id"},
    ft.CASE_VIEWED: {"staff": "$data.staff_id", "case": "$data.case_id"},
    ft.REPLY_REQUESTED: {"staff": "$data.staff_id"},
    ft.SETTINGS_CHANGED: {"what": "$data.what"},
    ft.SERVICE_STARTED: {"service": "$service"},
    ft.SERVICE_STOPPED: {"service": "$service"},
    ft.BUS_DEAD_LETTERED: {"queue": "$data.queue"},
    ft.LINE_API_ERROR: {"endpoint": "$data.endpoint", "status": "$data.status"},
    # identical summaries share a row; the histogram is merged below
    ft.WEBHOOK_REQUESTS: {
        "requests": "$data.requests",
        "status": "$data.by_status",
        "buckets": "$data.latency_ms_buckets",
    },
}
_STAFF_CHANGE = {
    "id": "$_id",
    "at": "$at",
    "day": "$jst.day",
    "staff": "$data.staff_id",
    "before": "$data.before",
    "after": "$data.after",
    "role": "$data.role",
    "by": "$data.by",
}
STAFF_CHANGE_TYPES = {
    ft.STAFF_CREATED: "created",
    ft.STAFF_DISABLED: "disabled",
    ft.STAFF_ENABLED: "enabled",
    ft.STAFF_ROLE_CHANGED: "role_changed",
}
for _type in STAFF_CHANGE_TYPES:
    _DIMENSIONS[_type] = _STAFF_CHANGE


def _rows(fact_type: str | list[str]) -> dict[str, Any]:
    """Match the grouped rows of one fact type (or several)."""
    if isinstance(fact_type, list):
        return {"$match": {"_id.t": {"$in": fact_type}}}
    return {"$match": {"_id.t": fact_type}}


def _sum_by(fact_type: str | list[str], key: Any, value: Any = "$n") -> list[dict[str, Any]]:
    return [_rows(fact_type), {"$group": {"_id": key, "n": {"$sum": value}}}]


def _row_is(fact_type: str) -> dict[str, Any]:
    return {"$eq": ["$_id.t", fact_type]}


def month_pipeline(month: Month) -> list[dict[str, Any]]:
    dimensions = {
        "$switch": {
            "branches": [{"case": _is(t), "then": dims} for t, dims in _DIMENSIONS.items()],
            "default": {},
        }
    }
    grouped = {
        "$group": {
            "_id": {"t": "$type", "k": dimensions},
            "n": {"$sum": 1},
            "messages": {"$sum": {"$ifNull": ["$data.messages", 1]}},
            "recipients": {"$sum": "$data.recipients"},
            "failures": {"$sum": "$data.failures"},
            "erased": {"$sum": "$data.erased_messages"},
        }
    }
    k = "$_id.k"
    opened = ft.CASE_OPENED
    facets: dict[str, list[dict[str, Any]]] = {
        "types": [{"$group": {"_id": "$_id.t", "n": {"$sum": "$n"}}}],
        # 登録状況
        "follows": _sum_by(ft.LINE_FOLLOWED, f"{k}.unblocked"),
        "school_answers": _sum_by(ft.SCHOOL_TYPE_SET, f"{k}.school"),
        # 相談件数
        "opened": [
            _rows(opened),
            {
                "$group": {
                    "_id": None,
                    "n": {"$sum": "$n"},
                    "in_hours": {"$sum": _when({"$eq": [f"{k}.in_hours", True]}, "$n", 0)},
                    "urgent": {"$sum": _when({"$eq": [f"{k}.urgent", True]}, "$n", 0)},
                }
            },
        ],
        "by_day": _sum_by(opened, f"{k}.day"),
        "by_weekday": _sum_by(opened, f"{k}.weekday"),
        "by_hour": _sum_by(opened, f"{k}.hour"),
        "by_category": [
            # each close once per category it names (a key named twice still counts once); a
            # close without any is counted as 不明, as a close without a category always was
            _rows(ft.CASE_CLOSED),
            {"$project": {"n": 1, "row": "$_id", "category": f"{k}.categories"}},
            {"$unwind": {"path": "$category", "preserveNullAndEmptyArrays": True}},
            {"$group": {"_id": {"row": "$row", "c": "$category"}, "n": {"$first": "$n"}}},
            {"$group": {"_id": "$_id.c", "n": {"$sum": "$n"}}},
        ],
        "by_grade": _sum_by(ft.CASE_CLOSED, f"{k}.grade"),
        "by_gender": _sum_by(ft.CASE_CLOSED, f"{k}.gender"),
        "handed_over": _sum_by(
            ft.CASE_CLOSED, None, _when({"$eq": [f"{k}.handed_over", True]}, "$n", 0)
        ),
        "checkin_answers": _sum_by(ft.CHECKIN_ANSWERED, f"{k}.choice"),
        "checkin_skipped": _sum_by(ft.CHECKIN_SKIPPED, f"{k}.reason"),
        "replies": [
            _rows(ft.REPLY_SENT),
            {
                "$group": {
                    "_id": {"purpose": f"{k}.purpose", "method": f"{k}.method"},
                    "n": {"$sum": "$n"},
                    "messages": {"$sum": "$messages"},
                }
            },
        ],
        "reply_failures": _sum_by(ft.REPLY_FAILED, f"{k}.purpose"),
        "quota": [_rows(ft.LINE_QUOTA_READ), {"$sort": {f"{k[1:]}.at": -1}}, {"$limit": 1}],
        # 緊急性の高い相談
        "flagged": [
            _rows(ft.CASE_FLAGGED_URGENT),
            {"$sort": {"_id.k.at": 1, "_id.k.id": 1}},
            {"$group": {"_id": f"{k}.case", "in_hours": {"$first": f"{k}.in_hours"}}},
            {
                "$group": {
                    "_id": None,
                    "n": {"$sum": 1},
                    "out_of_hours": {"$sum": _when({"$eq": ["$in_hours", False]}, 1, 0)},
                }
            },
        ],
        "keywords": _distinct_cases_by(ft.CASE_FLAGGED_URGENT, "keywords"),
        "risks": _distinct_cases_by(ft.CASE_FLAGGED_URGENT, "risks"),
        "emergency_types": _sum_by(ft.EMERGENCY_RAISED, f"{k}.type"),
        "contacts": _sum_by(ft.EMERGENCY_CONTACT, f"{k}.agency"),
        "contact_results": _sum_by(ft.EMERGENCY_CONTACT, f"{k}.result"),
        # 自動応答・一斉送信
        "broadcasts": [
            _rows([ft.BROADCAST_STARTED, ft.BROADCAST_FINISHED]),
            {
                "$group": {
                    "_id": f"{k}.broadcast",
                    "day": {"$max": _when(_row_is(ft.BROADCAST_STARTED), f"{k}.day")},
                    "audience": {"$max": _when(_row_is(ft.BROADCAST_STARTED), f"{k}.audience")},
                    "recipients": {"$sum": _when(_row_is(ft.BROADCAST_FINISHED), "$recipients", 0)},
                    "failures": {"$sum": _when(_row_is(ft.BROADCAST_FINISHED), "$failures", 0)},
                    "finished": {"$max": _when(_row_is(ft.BROADCAST_FINISHED), True, False)},
                }
            },
            {"$sort": {"_id": 1}},
        ],
        "chunks": _sum_by(ft.BROADCAST_CHUNK_SENT, None, "$recipients"),
        # 情報セキュリティ
        "signature": _sum_by(ft.SIGNATURE_REJECTED, f"{k}.reason"),
        "logins": _sum_by(ft.LOGIN_SUCCEEDED, f"{k}.second_factor"),
        "login_failures": _sum_by(ft.LOGIN_FAILED, f"{k}.reason"),
        "lockouts": _sum_by(ft.LOCKED_OUT, f"{k}.staff"),
        "staff_changes": [
            _rows(list(STAFF_CHANGE_TYPES)),
            {"$sort": {"_id.k.at": 1, "_id.k.id": 1}},
            {
                "$project": {
                    "_id": 0,
                    "type": "$_id.t",
                    "day": f"{k}.day",
                    "staff_id": f"{k}.staff",
                    "before": f"{k}.before",
                    "after": {"$ifNull": [f"{k}.after", f"{k}.role"]},
                    "by": f"{k}.by",
                }
            },
        ],
        "audit_views": [
            _rows(ft.CASE_VIEWED),
            {"$group": {"_id": f"{k}.staff", "views": {"$sum": "$n"}, "cases": {"$sum": 1}}},
        ],
        "audit_actions": _sum_by(
            [ft.REPLY_REQUESTED, ft.CASE_CLOSED], {"s": f"{k}.staff", "t": "$_id.t"}
        ),
        "settings": _sum_by(ft.SETTINGS_CHANGED, f"{k}.what"),
        "retention": [
            _rows(ft.RETENTION_RUN),
            {"$group": {"_id": None, "n": {"$sum": "$n"}, "erased": {"$sum": "$erased"}}},
        ],
        # システム稼働
        "services": _sum_by(
            [ft.SERVICE_STARTED, ft.SERVICE_STOPPED], {"s": f"{k}.service", "t": "$_id.t"}
        ),
        "webhook": _sum_by(ft.WEBHOOK_REQUESTS, None, {"$multiply": [f"{k}.requests", "$n"]}),
        "webhook_status": [
            _rows(ft.WEBHOOK_REQUESTS),
            {"$project": {"n": 1, "kv": {"$objectToArray": {"$ifNull": [f"{k}.status", {}]}}}},
            {"$unwind": "$kv"},
            {"$group": {"_id": "$kv.k", "n": {"$sum": {"$multiply": ["$kv.v", "$n"]}}}},
        ],
        # Merge the histograms; a summary whose bucket counts add up to more than its requests
        # is cumulative (Prometheus style) and is kept apart, to be differenced.
        "webhook_latency": [
            _rows(ft.WEBHOOK_REQUESTS),
            {
                "$project": {
                    "n": 1,
                    "requests": f"{k}.requests",
                    "kv": {"$objectToArray": {"$ifNull": [f"{k}.buckets", {}]}},
                }
            },
            # A summary's bucket total by an accumulator over one bucket at a time: the
            # expression {"$sum": "$kv.v"} over the array of buckets is 0 on SecantusDB 0.7.0b3
            # and {"$sum": {"$map": …}} is 0 on mongomock; see docs/STORE.md.
            {"$unwind": "$kv"},
            {
                "$group": {
                    "_id": "$_id",
                    "n": {"$first": "$n"},
                    "requests": {"$first": "$requests"},
                    "total": {"$sum": "$kv.v"},
                    "kv": {"$push": "$kv"},
                }
            },
            {"$project": {"n": 1, "kv": 1, "cumulative": {"$gt": ["$total", "$requests"]}}},
            {"$unwind": "$kv"},
            {
                "$group": {
                    "_id": {"k": "$kv.k", "cumulative": "$cumulative"},
                    "n": {"$sum": {"$multiply": ["$kv.v", "$n"]}},
                }
            },
        ],
        "dead_letters": _sum_by(ft.BUS_DEAD_LETTERED, f"{k}.queue"),
        "reply_notes": _sum_by(ft.REPLY_SENT, f"{k}.note"),
        "api_errors": _sum_by(ft.LINE_API_ERROR, {"e": f"{k}.endpoint", "s": f"{k}.status"}),
    }
    return [{"$match": {"jst.month": str(month)}}, grouped, {"$facet": facets}]


# -- one row per case: durations --------------------------------------------------------------


def case_pipeline(month: Month) -> list[dict[str, Any]]:
    window = {"$gte": month.start, "$lt": month.end + timedelta(days=FOLLOW_UP_DAYS)}
    opened = _is(ft.CASE_OPENED)
    reply = _is(ft.REPLY_SENT)
    flagged = _is(ft.CASE_FLAGGED_URGENT)
    in_hours_cases = {"opened": {"$ne": None}, "in_hours": True}
    return [
        {
            "$match": {
                "$or": [
                    {"type": ft.CASE_OPENED, "jst.month": str(month)},
                    {"type": ft.REPLY_SENT, "data.purpose": COUNSELOR_REPLY, "at": window},
                    {
                        "type": {"$in": [ft.CASE_CLAIMED, ft.CASE_CLOSED, ft.CASE_FLAGGED_URGENT]},
                        "at": window,
                    },
                ]
            }
        },
        {
            "$group": {
                "_id": "$data.case_id",
                "opened": {"$min": _when(opened, "$at")},
                "in_hours": {"$max": _when(opened, "$data.in_hours")},
                "urgent": {
                    "$max": _when(
                        {"$or": [{"$and": [opened, {"$eq": ["$data.urgent", True]}]}, flagged]},
                        True,
                    )
                },
                "reply": {"$min": _when(reply, "$at")},
                "claim": {"$min": _when(_is(ft.CASE_CLAIMED), "$at")},
                "closed": {"$min": _when(_is(ft.CASE_CLOSED), "$at")},
                "flagged": {
                    "$min": _when({"$and": [flagged, {"$eq": ["$jst.month", str(month)]}]}, "$at")
                },
                "replies": {"$push": _when(reply, "$at")},
            }
        },
        {"$match": {"_id": {"$ne": None}}},
        {
            "$facet": {
                "answered": [
                    {"$match": {"opened": {"$ne": None}, "reply": {"$ne": None}}},
                    {
                        "$group": {
                            "_id": None,
                            "total": {"$sum": 1},
                            "in_hours": {"$sum": _when({"$eq": ["$in_hours", True]}, 1, 0)},
                        }
                    },
                ],
                "first_reply": [
                    {"$match": {**in_hours_cases, "reply": {"$ne": None}}},
                    *_percentiles({"$subtract": ["$reply", "$opened"]}),
                ],
                "first_reply_urgent": [
                    {"$match": {**in_hours_cases, "urgent": True, "reply": {"$ne": None}}},
                    *_percentiles({"$subtract": ["$reply", "$opened"]}),
                ],
                "waiting": [
                    {"$match": {**in_hours_cases, "claim": {"$ne": None}}},
                    *_percentiles({"$subtract": ["$claim", "$opened"]}),
                ],
                "length": [
                    {"$match": {"opened": {"$ne": None}, "closed": {"$ne": None}}},
                    *_percentiles({"$subtract": ["$closed", "$opened"]}),
                ],
                "flag_to_reply": [
                    {"$match": {"flagged": {"$ne": None}}},
                    {"$unwind": "$replies"},
                    {"$match": {"replies": {"$ne": None}}},
                    {"$match": {"$expr": {"$gte": ["$replies", "$flagged"]}}},
                    {
                        "$group": {
                            "_id": "$_id",
                            "reply": {"$min": "$replies"},
                            "flagged": {"$first": "$flagged"},
                        }
                    },
                    *_percentiles({"$subtract": ["$reply", "$flagged"]}),
                ],
            }
        },
    ]


# -- each case's school type, as the console shows it -----------------------------------------


def scope_pipeline(month: Month) -> list[dict[str, Any]]:
    """The school type and 対象外 of each case opened in the month, as the console shows them.

    A case takes the user's answer at its opening (``case.opened``), and triage updates the open
    case with every later answer (``user.school_type_set``, which names the user, not the case)
    until it is closed; so the last answer between the opening and the close (or the end of the
    follow-up window) decides, else the opening's.
    """
    window = {"$gte": month.start, "$lt": month.end + timedelta(days=FOLLOW_UP_DAYS)}
    opened = _is(ft.CASE_OPENED)
    answer = _is(ft.SCHOOL_TYPE_SET)
    answers_in_case = {
        "$filter": {
            "input": "$answers",
            "as": "a",
            "cond": {
                "$and": [
                    {"$ne": ["$$a", None]},
                    {"$gte": ["$$a.at", "$cases.opened"]},
                    {"$lte": ["$$a.at", {"$ifNull": ["$cases.closed", window["$lt"]]}]},
                ]
            },
        }
    }
    return [
        {
            "$match": {
                "$or": [
                    {"type": ft.CASE_OPENED, "jst.month": str(month)},
                    {"type": {"$in": [ft.CASE_CLOSED, ft.SCHOOL_TYPE_SET]}, "at": window},
                ]
            }
        },
        {"$sort": {"at": 1, "_id": 1}},
        # one row per case (its opening and close), one per answer
        {
            "$group": {
                "_id": _when(answer, {"a": "$_id"}, {"c": "$data.case_id"}),
                "user": {"$max": "$data.user_id"},
                "opened": {"$min": _when(opened, "$at")},
                "closed": {"$min": _when(_is(ft.CASE_CLOSED), "$at")},
                "school": {"$max": _when(opened, "$data.school_type")},
                "out_of_scope": {"$max": _when(opened, "$data.out_of_scope")},
                "answer": {
                    "$max": _when(
                        answer,
                        {"at": "$at", "school": "$data.school_type", "eligible": "$data.eligible"},
                    )
                },
            }
        },
        {"$match": {"$or": [{"opened": {"$ne": None}}, {"answer": {"$ne": None}}]}},
        {"$sort": {"answer.at": 1, "_id": 1}},
        {
            "$group": {
                "_id": "$user",
                "cases": {
                    "$push": _when(
                        {"$ne": ["$opened", None]},
                        {
                            "opened": "$opened",
                            "closed": "$closed",
                            "school": "$school",
                            "out_of_scope": "$out_of_scope",
                        },
                    )
                },
                "answers": {"$push": "$answer"},
            }
        },
        {"$unwind": "$cases"},
        {"$match": {"cases": {"$ne": None}}},
        {"$project": {"case": "$cases", "answers": answers_in_case}},
        {
            "$project": {
                "last": {"$arrayElemAt": ["$answers", -1]},
                "has_answer": {"$gt": [{"$size": "$answers"}, 0]},
                "case": 1,
            }
        },
        {
            "$project": {
                "school": _when("$has_answer", "$last.school", "$case.school"),
                "out_of_scope": _when(
                    "$has_answer",
                    {"$eq": ["$last.eligible", False]},
                    {"$eq": ["$case.out_of_scope", True]},
                ),
            }
        },
        {
            "$facet": {
                "out_of_scope": [
                    {"$group": {"_id": None, "n": {"$sum": _when("$out_of_scope", 1, 0)}}}
                ],
                "by_school": [{"$group": {"_id": "$school", "n": {"$sum": 1}}}],
            }
        },
    ]


# -- what holds at month end ------------------------------------------------------------------

_FOLLOW_TYPES = [ft.LINE_FOLLOWED, ft.LINE_UNFOLLOWED, ft.SCHOOL_TYPE_SET]
_STAFF_TYPES = [
    ft.STAFF_CREATED,
    ft.STAFF_DISABLED,
    ft.STAFF_ENABLED,
    ft.STAFF_ROLE_CHANGED,
    ft.PASSWORD_CHANGED,
    ft.SECOND_FACTOR_ENABLED,
    ft.SECOND_FACTOR_DISABLED,
]


def _latest(types: list[str]) -> list[dict[str, Any]]:
    return [
        {"$match": {"type": {"$in": types}}},
        {"$sort": {"at": -1, "_id": -1}},
        {"$limit": 1},
        {"$project": {"_id": 0, "type": 1, "at": 1, "data": 1}},
    ]


def state_pipeline(month: Month) -> list[dict[str, Any]]:
    end = month.end
    school = _is(ft.SCHOOL_TYPE_SET)
    token_types = [*TOKEN_ISSUE_TYPES, ft.TOKEN_REVOKED]
    return [
        {
            "$match": {
                "type": {"$in": [*_FOLLOW_TYPES, *_STAFF_TYPES, *token_types]},
                "at": {"$lt": end},
            }
        },
        {"$sort": {"at": 1, "_id": 1}},
        {
            "$facet": {
                "registered": [
                    {"$match": {"type": {"$in": _FOLLOW_TYPES}}},
                    {
                        "$group": {
                            "_id": {"u": "$data.user_id", "k": _when(school, "s", "f")},
                            "last": {"$last": "$type"},
                            "school": {"$last": "$data.school_type"},
                            "eligible": {"$last": "$data.eligible"},
                        }
                    },
                    {
                        "$group": {
                            "_id": "$_id.u",
                            "follow": {"$max": _when({"$eq": ["$_id.k", "f"]}, "$last")},
                            "school": {"$max": _when({"$eq": ["$_id.k", "s"]}, "$school")},
                            "eligible": {"$max": _when({"$eq": ["$_id.k", "s"]}, "$eligible")},
                        }
                    },
                    {"$match": {"_id": {"$ne": None}, "follow": ft.LINE_FOLLOWED}},
                    {
                        "$group": {
                            "_id": {"school": "$school", "eligible": "$eligible"},
                            "n": {"$sum": 1},
                        }
                    },
                ],
                "staff": [
                    {"$match": {"type": {"$in": _STAFF_TYPES}}},
                    {
                        "$group": {
                            "_id": "$data.staff_id",
                            "created": {"$min": _when(_is(ft.STAFF_CREATED), "$at")},
                            "name": {"$max": _when(_is(ft.STAFF_CREATED), "$data.name")},
                            "disabled": {"$max": _when(_is(ft.STAFF_DISABLED), "$at")},
                            "enabled": {"$max": _when(_is(ft.STAFF_ENABLED), "$at")},
                            "password": {
                                "$max": _when(
                                    {"$in": ["$type", [ft.STAFF_CREATED, ft.PASSWORD_CHANGED]]},
                                    "$at",
                                )
                            },
                            "on": {"$max": _when(_is(ft.SECOND_FACTOR_ENABLED), "$at")},
                            "off": {"$max": _when(_is(ft.SECOND_FACTOR_DISABLED), "$at")},
                            "roles": {
                                "$push": _when(
                                    _is(ft.STAFF_CREATED),
                                    "$data.role",
                                    _when(_is(ft.STAFF_ROLE_CHANGED), "$data.after"),
                                )
                            },
                        }
                    },
                    {"$match": {"_id": {"$ne": None}, "created": {"$ne": None}}},
                    {
                        "$project": {
                            "name": 1,
                            "active": {
                                "$or": [
                                    {"$eq": ["$disabled", None]},
                                    {"$gt": ["$enabled", "$disabled"]},
                                ]
                            },
                            "roles": {
                                "$filter": {
                                    "input": "$roles",
                                    "as": "r",
                                    "cond": {"$ne": ["$$r", None]},
                                }
                            },
                            "age_days": {
                                "$floor": {"$divide": [{"$subtract": [end, "$password"]}, DAY_MS]}
                            },
                            "second_factor": {"$gt": ["$on", "$off"]},
                        }
                    },
                    {
                        "$project": {
                            "name": 1,
                            "active": 1,
                            "role": {"$arrayElemAt": ["$roles", -1]},
                            "age_days": 1,
                            "second_factor": 1,
                        }
                    },
                    {"$sort": {"_id": 1}},
                ],
                "token_issued": _latest(list(TOKEN_ISSUE_TYPES)),
                "token_revoked": [
                    {"$match": {"type": ft.TOKEN_REVOKED}},
                    {
                        "$group": {
                            "_id": None,
                            "keys": {"$addToSet": "$data.key_id"},
                            "last": {"$max": "$at"},
                        }
                    },
                ],
            }
        },
    ]


# -- reading the results ----------------------------------------------------------------------


def _key(value: Any) -> str:
    return "" if value is None else str(value)


def _distinct_cases_by(fact_type: str, name: str) -> list[dict[str, Any]]:
    """Per value of the list ``name`` of the facts, the distinct cases it came with."""
    k = "$_id.k"
    return [
        _rows(fact_type),
        {"$unwind": f"{k}.{name}"},
        {"$group": {"_id": {"w": f"{k}.{name}", "c": f"{k}.case"}}},
        {"$group": {"_id": "$_id.w", "n": {"$sum": 1}}},
    ]


def _counts(rows: list[dict[str, Any]] | None, field: str = "n") -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows or ():
        if row.get(field):
            key = _key(row.get("_id"))
            out[key] = out.get(key, 0) + int(row[field])
    return out


def _first(rows: list[dict[str, Any]] | None) -> dict[str, Any]:
    return rows[0] if rows else {}


def _durations(rows: list[dict[str, Any]] | None) -> Durations:
    row = _first(rows)
    n = int(row.get("n") or 0)
    if n == 0:
        return Durations()
    return Durations(n, row["p50"] / 1000, row["p90"] / 1000)


def _figures(
    month: Month,
    monthly: dict[str, Any],
    cases: dict[str, Any],
    state: dict[str, Any],
    scope: dict[str, Any],
) -> Figures:
    types = _counts(monthly.get("types"))
    opened = _first(monthly.get("opened"))
    follows = _counts(monthly.get("follows"))

    replies_by_purpose: dict[str, int] = {}
    sends_by_method: dict[str, int] = {}
    pushes: dict[str, int] = {}
    free: dict[str, int] = {}
    out_counselor = out_auto = 0
    for row in monthly.get("replies") or ():
        if not row.get("n"):
            continue
        purpose = _key(row["_id"].get("purpose"))
        method = _key(row["_id"].get("method"))
        replies_by_purpose[purpose] = replies_by_purpose.get(purpose, 0) + row["n"]
        sends_by_method[method] = sends_by_method.get(method, 0) + row["n"]
        kind = send_kind(purpose)
        by_kind = free if method == "reply" else pushes
        by_kind[kind] = by_kind.get(kind, 0) + row["n"]
        if purpose == COUNSELOR_REPLY:
            out_counselor += row["messages"]
        else:
            out_auto += row["messages"]
    quota = _first(monthly.get("quota")).get("_id", {}).get("k", {})

    flagged = _first(monthly.get("flagged"))
    retention = _first(monthly.get("retention"))
    webhook = _first(monthly.get("webhook"))
    answered = _first(cases.get("answered"))

    latency: dict[str, int] = {}
    cumulative: dict[str, int] = {}
    for row in monthly.get("webhook_latency") or ():
        target = cumulative if row["_id"].get("cumulative") else latency
        key = _key(row["_id"].get("k"))
        target[key] = target.get(key, 0) + int(row["n"])
    for key, n in per_bucket(cumulative).items():
        latency[key] = latency.get(key, 0) + n
    latency = {k: n for k, n in latency.items() if n and bucket_bound(k) is not None}

    audit: dict[str, dict[str, int]] = {}
    for row in monthly.get("audit_views") or ():
        if row.get("views"):
            entry = audit.setdefault(_key(row["_id"]), {})
            entry["views"], entry["cases"] = row["views"], row["cases"]
    for row in monthly.get("audit_actions") or ():
        if row.get("n"):
            entry = audit.setdefault(_key(row["_id"].get("s")), {})
            entry[row["_id"].get("t")] = row["n"]

    starts: dict[str, int] = {}
    stops: dict[str, int] = {}
    for row in monthly.get("services") or ():
        if row.get("n"):
            target = starts if row["_id"].get("t") == ft.SERVICE_STARTED else stops
            target[_key(row["_id"].get("s"))] = row["n"]

    registered_by_school: dict[str, int] = {}
    registered_eligible: dict[str, int] = {}
    for row in state.get("registered") or ():
        if not row.get("n"):
            continue
        school = _key(row["_id"].get("school")) or NO_SCHOOL_TYPE
        eligible = {True: "yes", False: "no"}.get(row["_id"].get("eligible"), "unknown")
        registered_by_school[school] = registered_by_school.get(school, 0) + row["n"]
        registered_eligible[eligible] = registered_eligible.get(eligible, 0) + row["n"]

    return Figures(
        month=str(month),
        followed_new=follows.get("False", 0),
        followed_unblocked=follows.get("True", 0),
        unfollowed=types.get(ft.LINE_UNFOLLOWED, 0),
        registered_end=sum(registered_by_school.values()),
        registered_by_school=registered_by_school,
        registered_eligible=registered_eligible,
        school_answers=_counts(monthly.get("school_answers")),
        cases_opened=int(opened.get("n") or 0),
        cases_in_hours=int(opened.get("in_hours") or 0),
        cases_out_of_scope=int(_first(scope.get("out_of_scope")).get("n") or 0),
        cases_urgent_at_open=int(opened.get("urgent") or 0),
        opened_by_day=_counts(monthly.get("by_day")),
        opened_by_weekday={int(k): n for k, n in _counts(monthly.get("by_weekday")).items()},
        opened_by_hour={int(k): n for k, n in _counts(monthly.get("by_hour")).items()},
        opened_by_school=_counts(scope.get("by_school")),
        cases_closed=types.get(ft.CASE_CLOSED, 0),
        closed_by_category=_counts(monthly.get("by_category")),
        closed_by_grade=_counts(monthly.get("by_grade")),
        closed_by_gender=_counts(monthly.get("by_gender")),
        cases_handed_over=int(_first(monthly.get("handed_over")).get("n") or 0),
        messages_in=types.get(ft.MESSAGE_RECEIVED, 0),
        messages_out_counselor=out_counselor,
        messages_out_auto=out_auto,
        answered_in_hours=int(answered.get("in_hours") or 0),
        answered_total=int(answered.get("total") or 0),
        first_reply=_durations(cases.get("first_reply")),
        first_reply_urgent=_durations(cases.get("first_reply_urgent")),
        waiting=_durations(cases.get("waiting")),
        length=_durations(cases.get("length")),
        checkin_sent=types.get(ft.CHECKIN_SENT, 0),
        checkin_answers=_counts(monthly.get("checkin_answers")),
        checkin_skipped=_counts(monthly.get("checkin_skipped")),
        urgent_cases=int(flagged.get("n") or 0),
        urgent_out_of_hours=int(flagged.get("out_of_hours") or 0),
        urgent_by_keyword=_counts(monthly.get("keywords")),
        urgent_by_risk=_counts(monthly.get("risks")),
        flag_to_reply=_durations(cases.get("flag_to_reply")),
        emergencies_by_type=_counts(monthly.get("emergency_types")),
        emergency_contacts=_counts(monthly.get("contacts")),
        emergency_results=_counts(monthly.get("contact_results")),
        emergencies_closed=types.get(ft.EMERGENCY_CLOSED, 0),
        emergency_notifications=types.get(ft.EMERGENCY_NOTIFIED, 0),
        replies_by_purpose=replies_by_purpose,
        reply_failures_by_purpose=_counts(monthly.get("reply_failures")),
        sends_by_method=sends_by_method,
        media_refused=types.get(ft.MEDIA_REFUSED, 0),
        broadcasts=tuple(
            BroadcastRow(
                broadcast_id=_key(row["_id"]),
                started_day=row.get("day"),
                audience=row.get("audience"),
                recipients=int(row.get("recipients") or 0),
                failures=int(row.get("failures") or 0),
                finished=bool(row.get("finished")),
            )
            for row in monthly.get("broadcasts") or ()
        ),
        broadcast_recipients=int(_first(monthly.get("chunks")).get("n") or 0),
        broadcasts_refused=types.get(ft.BROADCAST_REFUSED, 0),
        pushes_by_kind=pushes,
        free_replies_by_kind=free,
        quota_limit=quota.get("limit"),
        quota_used=quota.get("used"),
        signature_rejected=_counts(monthly.get("signature")),
        logins=types.get(ft.LOGIN_SUCCEEDED, 0),
        logins_second_factor=_counts(monthly.get("logins")).get("True", 0),
        login_failures=_counts(monthly.get("login_failures")),
        lockouts=_counts(monthly.get("lockouts")),
        staff=tuple(
            StaffRow(
                staff_id=_key(row["_id"]),
                name=row.get("name"),
                role=row.get("role"),
                password_age_days=None if row.get("age_days") is None else int(row["age_days"]),
                second_factor=bool(row.get("second_factor")),
            )
            for row in state.get("staff") or ()
            if row.get("active")
        ),
        staff_names={
            _key(row["_id"]): row["name"]
            for row in state.get("staff") or ()
            if isinstance(row.get("name"), str)
        },
        staff_changes=tuple(
            StaffChange(
                day=row["day"],
                staff_id=_key(row.get("staff_id")),
                what=STAFF_CHANGE_TYPES[row["type"]],
                before=row.get("before"),
                after=row.get("after"),
                by=row.get("by"),
            )
            for row in monthly.get("staff_changes") or ()
        ),
        audit=tuple(
            AuditRow(
                staff_id=staff_id,
                case_views=entry.get("views", 0),
                cases_viewed=entry.get("cases", 0),
                replies=entry.get(ft.REPLY_REQUESTED, 0),
                closes=entry.get(ft.CASE_CLOSED, 0),
            )
            for staff_id, entry in sorted(audit.items())
        ),
        settings_changed=_counts(monthly.get("settings")),
        token=_token(
            _first(state.get("token_issued")), _first(state.get("token_revoked")), month.end
        ),
        retention_runs=int(retention.get("n") or 0),
        erased_messages=int(retention.get("erased") or 0),
        service_starts=starts,
        service_stops=stops,
        webhook_requests=int(webhook.get("n") or 0),
        webhook_by_status=_counts(monthly.get("webhook_status")),
        webhook_latency_ms=latency,
        dead_letters=_counts(monthly.get("dead_letters")),
        sends_maybe_twice=_counts(monthly.get("reply_notes")).get(ft.NOTE_MAYBE_TWICE, 0),
        api_errors={
            f"{_key(row['_id'].get('e'))} {_key(row['_id'].get('s'))}".strip(): row["n"]
            for row in monthly.get("api_errors") or ()
            if row.get("n")
        },
    )


def _token(issued: dict[str, Any], revoked: dict[str, Any], end: datetime) -> TokenState:
    """The token in use at month end: the last one issued, unless a revocation names it (a
    renewal revokes the token it replaces, not the new one)."""
    revoked_keys = set(revoked.get("keys") or ())
    if not issued:
        return TokenState(revoked=bool(revoked.get("last")))
    data = issued.get("data") or {}
    key_id = data.get("key_id")
    if key_id is not None:
        is_revoked = key_id in revoked_keys
    else:
        is_revoked = revoked.get("last") is not None and revoked["last"] > issued["at"]
    return TokenState(
        source=issued["type"],
        issued_at=(when := _instant(data.get("issued_at")) or issued["at"]),
        age_days=(end - when) // timedelta(days=1),
        expires_at=_instant(data.get("expires_at")),
        key_id=key_id,
        revoked=is_revoked,
    )


def _instant(value: Any) -> datetime | None:
    """An ISO-8601 time from a fact's data (UTC when it names no zone); None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
