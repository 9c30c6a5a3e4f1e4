"""The catalogue of fact types: who publishes each, and what its ``data`` holds.

The monthly report is built from the ``events`` log alone, so this catalogue is the contract
between every service and reporting. Publish facts with these constants (``facts.publish(
CASE_OPENED, {...})``); add a type here before using it. ``data`` is plain JSON and never holds
message text, tokens or passwords. Times inside ``data`` are ISO-8601 strings in UTC; the fact's
own ``at`` is when it happened. ``user_id`` is the LINE user id (the store holds it anyway; logs
hash it).
"""

from __future__ import annotations

from typing import Final

# -- every service --------------------------------------------------------------------------
SERVICE_STARTED: Final = "service.started"  # {host, pid}
SERVICE_STOPPED: Final = "service.stopped"  # {host, pid}
BUS_DEAD_LETTERED: Final = "bus.dead_lettered"  # {queue, reason, message_type}

# -- ingress ----------------------------------------------------------------------------------
SIGNATURE_REJECTED: Final = "security.signature_rejected"  # {source, reason: missing|mismatch}
# Per-minute summary of webhook requests, so the report has latency without a fact per request:
# {window_start, window_seconds, requests, events, by_status: {"200": n, …},
#  latency_ms_buckets: {"<=le": n, …, "+Inf": n}}
# (keys like "<=50" and "+Inf"; reporting reads the counts per bucket or cumulative, Prometheus
#  style, and tells them apart by their sum against ``requests``)
WEBHOOK_REQUESTS: Final = "webhook.requests"

# -- triage -----------------------------------------------------------------------------------
LINE_FOLLOWED: Final = "line.followed"  # {user_id, unblocked: bool}
LINE_UNFOLLOWED: Final = "line.unfollowed"  # {user_id}
SCHOOL_TYPE_SET: Final = "user.school_type_set"  # {user_id, school_type, eligible}
LINE_EVENT_IGNORED: Final = "line.event_ignored"  # {event_type, webhook_event_id}
CASE_OPENED: Final = "case.opened"
# {case_id, user_id, in_hours: bool, out_of_scope: bool, school_type: str|None, urgent: bool}
MESSAGE_RECEIVED: Final = "message.received"  # {case_id, user_id, message_id, chars}
MEDIA_REFUSED: Final = "message.media_refused"  # {user_id, kind, replied: bool}
MESSAGE_UNSENT: Final = "message.unsent"  # {user_id, message_id, case_id|None}
# {case_id, user_id, keywords: [...], risks: [risk category, ...], in_hours}
CASE_FLAGGED_URGENT: Final = "case.flagged_urgent"
# A decision to answer automatically; dispatch's reply.sent says it went out:
# {user_id, case_id|None, purpose: greeting|out_of_hours|urgent_out_of_hours|congestion|
#  media_refused|school_type_answer|…}
AUTO_REPLY_DECIDED: Final = "auto_reply.decided"
CONGESTION_MEASURED: Final = "congestion.measured"
# {waiting, oldest_wait_seconds, estimated_wait_seconds, active_counselors, congested: bool}
RETENTION_RUN: Final = "retention.run"  # {erased_messages, older_than}

# -- dispatch ---------------------------------------------------------------------------------
REPLY_SENT: Final = "reply.sent"
# {purpose, method: reply|push, user_id, case_id|None, staff_id|None, latency_ms, request_id,
#  messages: n, command_id, note|None} — note: "already accepted" (a retry key LINE knew),
#  "token used by an earlier try", or NOTE_MAYBE_TWICE (a possible duplicate after a crash)
NOTE_MAYBE_TWICE: Final = "pushed after an earlier reply try: may have been received twice"
REPLY_FAILED: Final = "reply.failed"
# {purpose, user_id, case_id|None, staff_id|None, problem, reason, status, attempts, command_id,
#  maybe_delivered: an earlier try got no clear answer, so the student may have the text}
LINE_API_ERROR: Final = "line.api_error"  # {endpoint, status, request_id|None}
# broadcast.started and .refused also carry {requested_by, template, texts_digest}
BROADCAST_STARTED: Final = "broadcast.started"  # {broadcast_id, audience, method, planned}
BROADCAST_CHUNK_SENT: Final = "broadcast.chunk_sent"  # {broadcast_id, chunk, recipients}
BROADCAST_FINISHED: Final = "broadcast.finished"  # {broadcast_id, recipients, failures}
BROADCAST_REFUSED: Final = "broadcast.refused"  # {broadcast_id, reason}
# The month's LINE message budget as dispatch last read it (soudan_dispatch.quota), when changed:
# {limit|None, used, remaining|None, reserve}
LINE_QUOTA_READ: Final = "line.quota_read"
# The rich menu dispatch keeps as the default (soudan_dispatch.richmenu.RichMenuKeeper):
# {rich_menu_id, previous|None, name} and {error, attempt, retry_in_seconds} (an alert: until it
# is applied, students have no menu).
RICH_MENU_APPLIED: Final = "line.rich_menu_applied"
RICH_MENU_FAILED: Final = "line.rich_menu_failed"
LINE_TOKEN_ROTATED: Final = "security.line_token_rotated"  # {issued_at, key_id|None}
# Channel access tokens v2.1 that dispatch issues with its assertion signing key, and revokes
# when it renews them: {key_id, issued_at, expires_at} and {key_id, reason: renewed|…}.
TOKEN_ISSUED: Final = "security.token_issued"
TOKEN_REVOKED: Final = "security.token_revoked"

# -- console ----------------------------------------------------------------------------------
LOGIN_SUCCEEDED: Final = "security.login_succeeded"  # {staff_id, role, second_factor: bool}
LOGIN_FAILED: Final = "security.login_failed"  # {staff_id|None, reason, source}
LOCKED_OUT: Final = "security.locked_out"  # {staff_id, source}
PASSWORD_CHANGED: Final = "security.password_changed"  # {staff_id, by}
SECOND_FACTOR_ENABLED: Final = "security.second_factor_enabled"  # {staff_id}
SECOND_FACTOR_DISABLED: Final = "security.second_factor_disabled"  # {staff_id, by}
STAFF_CREATED: Final = "staff.created"  # {staff_id, role, by, name}
# (``name``, the display name: the monthly report names staff by it; older facts may lack it)
STAFF_ROLE_CHANGED: Final = "staff.role_changed"  # {staff_id, before, after, by}
STAFF_DISABLED: Final = "staff.disabled"  # {staff_id, by}
STAFF_ENABLED: Final = "staff.enabled"  # {staff_id, by}: a disabled account used again
CASE_VIEWED: Final = "case.viewed"  # {case_id, staff_id}
CASE_CLAIMED: Final = "case.claimed"  # {case_id, staff_id, waited_seconds}
CASE_RELEASED: Final = "case.released"  # {case_id, staff_id}
CASE_TRANSFERRED: Final = "case.transferred"  # {case_id, from_staff_id, to_staff_id, by}
CASE_NOTE_ADDED: Final = "case.note_added"  # {case_id, staff_id}
REPLY_REQUESTED: Final = "reply.requested"  # {case_id, staff_id, command_id, messages: n}
REPLY_RETRIED: Final = "reply.retried"  # {case_id, staff_id, command_id}: a failed reply sent again
CASE_CLOSED: Final = "case.closed"
# {case_id, staff_id, categories: [key, ...], category (the first, for readers of older facts),
#  grade (key | None: 不明), gender (key | None), handed_over (bool), outcome, opened_at,
#  duration_seconds, urgent, out_of_scope}. Facts before 2026-12 carry ``category`` only (read
#  as ``categories: [category]``), and no grade, gender or handed_over (不明, not handed over).
# outcome: resolved (助言して終了) | continuing (見守り・継続) | referred (関係機関につないだ) |
#          no_response (返事がなくなった) | other
EMERGENCY_RAISED: Final = "emergency.raised"  # {emergency_id, case_id, type, staff_id}
# type: suicide_notice (自殺予告) | child_abuse (児童虐待) | crime_victim (犯罪被害) | other
EMERGENCY_CONTACT: Final = "emergency.contact_recorded"
# {emergency_id, case_id, agency, result, staff_id, contacted_at}
# result: referred (対応を依頼した) | consulted (相談した) | no_answer (つながらなかった) |
#         callback (折り返し待ち)
EMERGENCY_CLOSED: Final = "emergency.closed"  # {emergency_id, case_id, staff_id}
EMERGENCY_NOTIFIED: Final = "emergency.notified"  # {emergency_id, channel: live|email, recipients}
EMERGENCY_NOTIFICATION_FAILED: Final = "emergency.notification_failed"
# {emergency_id, channel: email, reason, attempts}
SETTINGS_CHANGED: Final = "settings.changed"  # {what, before, after, staff_id}
BROADCAST_REQUESTED: Final = "broadcast.requested"  # {broadcast_id, staff_id, audience}
REPORT_DOWNLOADED: Final = "report.downloaded"  # {month, file, staff_id}

# -- reporting --------------------------------------------------------------------------------
REPORT_BUILT: Final = "report.built"  # {month, files: [...], trigger: schedule|manual}
REPORT_EMAILED: Final = "report.emailed"  # {month, recipients: n}
REPORT_EMAIL_FAILED: Final = "report.email_failed"  # {month, reason, attempts}

# -- dispatch: the student's chat while a counselor works (read marks, the typing animation) --
# Neither costs anything: LINE counts no message of the month's quota for them, and no
# reply.sent is published for them, so the report's and the broadcast page's budget never
# counts them either.
# A read mark (既読) LINE took: the student's messages up to message_id show 既読:
# {user_id, case_id|None, message_id, staff_id|None (who had the conversation open),
#  command_id, request_id|None, marked: n (messages of ours now read)}
LINE_READ_MARKED: Final = "line.read_marked"
# A read mark given up after its tries (harmless: the next one marks these too):
# {user_id, case_id|None, message_id, staff_id|None, command_id, status, reason, attempts}
LINE_READ_MARK_DROPPED: Final = "line.read_mark_dropped"
# The loading animation ("入力中…") shown while a counselor writes:
# {user_id, case_id|None, staff_id|None, seconds, command_id}
LINE_LOADING_STARTED: Final = "line.loading_started"

# -- honest waits, the check-in after a talk, a student in danger who leaves (issue 3-5) -------
# triage: the check-in question sent after a counselor closed a case (purpose checkin):
# {case_id, user_id, command_id}; one that will never be sent: {case_id, user_id, reason:
# blocked (the student blocked the account) | wrote_again (a newer case of the student opened
# before the quiet hours ended) | disabled; from the console at the close: emergency |
# out_of_scope}; the student's answer, once per case (a second tap is ``line.event_ignored``):
# {case_id, user_id, choice}. The wait notice is ``auto_reply.decided`` with purpose
# wait_notice and {ahead, estimated_wait_seconds}.
CHECKIN_SENT: Final = "checkin.sent"
CHECKIN_SKIPPED: Final = "checkin.skipped"
CHECKIN_ANSWERED: Final = "checkin.answered"
# triage: a student blocked the account (unfollow) while a case of theirs was urgent or had an
# open emergency: {case_id, user_id, urgent, emergency_ids: [...], case_state}
CASE_STUDENT_LEFT: Final = "case.student_left"
# console: who was told of it: {case_id, channel: live|email, recipients}
CASE_STUDENT_LEFT_NOTIFIED: Final = "case.student_left_notified"
# console: the mail about it was refused: {case_id, channel: email, reason, attempts, retry_at
# (None: no more tries, the mail is failed)}
CASE_STUDENT_LEFT_NOTIFICATION_FAILED: Final = "case.student_left_notification_failed"
