"""Request bodies checked as LINE checks them, with LINE's error body on failure.

The shapes follow ``messaging-api.yml`` (``ReplyMessageRequest``, ``PushMessageRequest``,
``MulticastRequest``, ``BroadcastRequest``, ``Message`` and its kinds, ``QuickReply``,
``RichMenuRequest``, ``MarkMessagesAsReadByTokenRequest``, ``ShowLoadingAnimationRequest``) and
the limits the spec does not carry (``line-openapi/README.md``). A
failure is a list of ``{"message", "property"}`` details, which the API answers as
``400 {"message": "The request body has N error(s)", "details": [...]}``.
"""

from __future__ import annotations

import re
from typing import Any

MAX_MESSAGES = 5
MAX_TEXT_UTF16 = 5000
MAX_MULTICAST_TO = 500
MAX_QUICK_REPLY_ITEMS = 13
MAX_ACTION_LABEL = 20
MAX_POSTBACK_DATA = 300
MAX_RICH_MENU_AREAS = 20
MAX_CHAT_BAR_TEXT = 14
LOADING_SECONDS = range(5, 61, 5)  # 5..60, multiples of 5 (ShowLoadingAnimationRequest)
RICH_MENU_SIZES = ((2500, 1686), (2500, 843), (1200, 810), (1200, 405), (800, 540), (800, 270))

USER_ID = re.compile(r"^U[0-9a-f]{32}$")
ANY_ID = re.compile(r"^[UCR][0-9a-f]{32}$")
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

MESSAGE_TYPES = (
    "text",
    "textV2",
    "sticker",
    "image",
    "video",
    "audio",
    "location",
    "imagemap",
    "template",
    "flex",
    "coupon",
)
ACTION_TYPES = (
    "postback",
    "message",
    "uri",
    "datetimepicker",
    "camera",
    "cameraRoll",
    "location",
    "richmenuswitch",
    "clipboard",
)

Details = list[dict[str, str]]


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _detail(details: Details, prop: str, message: str) -> None:
    details.append({"message": message, "property": prop})


def check_messages(body: dict[str, Any], details: Details) -> None:
    messages = body.get("messages")
    if messages is None:
        _detail(details, "messages", "May not be empty")
        return
    if not isinstance(messages, list):
        _detail(details, "messages", "Must be an array")
        return
    if not 1 <= len(messages) <= MAX_MESSAGES:
        _detail(details, "messages", f"Size must be between 1 and {MAX_MESSAGES}")
        return
    for i, message in enumerate(messages):
        _check_message(message, f"messages[{i}]", details)
    notification = body.get("notificationDisabled")
    if notification is not None and not isinstance(notification, bool):
        _detail(details, "notificationDisabled", "Must be a boolean")


def _check_message(message: Any, where: str, details: Details) -> None:
    if not isinstance(message, dict):
        _detail(details, where, "Must be an object")
        return
    kind = message.get("type")
    if kind is None:
        _detail(details, f"{where}.type", "May not be empty")
        return
    if kind not in MESSAGE_TYPES:
        _detail(
            details,
            f"{where}.type",
            "Must be one of the following values: [" + ", ".join(MESSAGE_TYPES) + "]",
        )
        return
    if kind == "text":
        text = message.get("text")
        if not isinstance(text, str) or not text:
            _detail(details, f"{where}.text", "May not be empty")
        elif utf16_units(text) > MAX_TEXT_UTF16:
            _detail(details, f"{where}.text", f"Length must be between 0 and {MAX_TEXT_UTF16}")
    quick = message.get("quickReply")
    if quick is not None:
        _check_quick_reply(quick, f"{where}.quickReply", details)


def _check_quick_reply(quick: Any, where: str, details: Details) -> None:
    items = quick.get("items") if isinstance(quick, dict) else None
    if not isinstance(items, list):
        _detail(details, f"{where}.items", "May not be empty")
        return
    if not 1 <= len(items) <= MAX_QUICK_REPLY_ITEMS:
        _detail(details, f"{where}.items", f"Size must be between 1 and {MAX_QUICK_REPLY_ITEMS}")
        return
    for i, item in enumerate(items):
        at = f"{where}.items[{i}]"
        if not isinstance(item, dict) or item.get("type", "action") != "action":
            _detail(details, f"{at}.type", "Must be 'action'")
            continue
        check_action(item.get("action"), f"{at}.action", details, label_required=True)


def check_action(action: Any, where: str, details: Details, *, label_required: bool) -> None:
    if not isinstance(action, dict):
        _detail(details, where, "May not be empty")
        return
    kind = action.get("type")
    if kind not in ACTION_TYPES:
        _detail(
            details,
            f"{where}.type",
            "Must be one of the following values: [" + ", ".join(ACTION_TYPES) + "]",
        )
        return
    label = action.get("label")
    if label is None:
        if label_required:
            _detail(details, f"{where}.label", "May not be empty")
    elif not isinstance(label, str) or not 1 <= len(label) <= MAX_ACTION_LABEL:
        _detail(details, f"{where}.label", f"Length must be between 1 and {MAX_ACTION_LABEL}")
    if kind == "postback":
        data = action.get("data")
        if not isinstance(data, str):
            _detail(details, f"{where}.data", "May not be empty")
        elif len(data) > MAX_POSTBACK_DATA:
            _detail(details, f"{where}.data", f"Length must be between 0 and {MAX_POSTBACK_DATA}")
    elif kind == "uri":
        uri = action.get("uri")
        if not isinstance(uri, str) or not re.match(r"^(https?|line|tel):", uri):
            _detail(details, f"{where}.uri", "Must be a valid URI (http, https, line or tel)")
    elif kind == "message" and (not isinstance(action.get("text"), str) or not action["text"]):
        _detail(details, f"{where}.text", "May not be empty")


def check_push(body: dict[str, Any], strict_ids: bool) -> Details:
    details: Details = []
    to = body.get("to")
    if not isinstance(to, str) or not to:
        _detail(details, "to", "May not be empty")
    elif strict_ids and not ANY_ID.match(to):
        _detail(details, "to", "The property, 'to', in the request body is invalid")
    check_messages(body, details)
    return details


def check_reply(body: dict[str, Any]) -> Details:
    details: Details = []
    token = body.get("replyToken")
    if not isinstance(token, str) or not token:
        _detail(details, "replyToken", "May not be empty")
    check_messages(body, details)
    return details


def check_multicast(body: dict[str, Any], strict_ids: bool) -> Details:
    details: Details = []
    to = body.get("to")
    if not isinstance(to, list) or not to:
        _detail(details, "to", "May not be empty")
    elif len(to) > MAX_MULTICAST_TO:
        _detail(details, "to", f"Size must be between 1 and {MAX_MULTICAST_TO}")
    else:
        for i, user_id in enumerate(to):
            if not isinstance(user_id, str) or (strict_ids and not USER_ID.match(user_id)):
                _detail(details, f"to[{i}]", "The property, 'to', in the request body is invalid")
                break
    check_messages(body, details)
    return details


def check_broadcast(body: dict[str, Any]) -> Details:
    details: Details = []
    check_messages(body, details)
    return details


def check_mark_as_read(body: dict[str, Any]) -> Details:
    details: Details = []
    token = body.get("markAsReadToken")
    if not isinstance(token, str) or not token:
        _detail(details, "markAsReadToken", "May not be empty")
    return details


def check_loading(body: dict[str, Any], strict_ids: bool) -> Details:
    """``chatId`` a user id (one-on-one chats only), ``loadingSeconds`` (default 20) 5..60 in
    steps of 5."""
    details: Details = []
    chat_id = body.get("chatId")
    if not isinstance(chat_id, str) or not chat_id:
        _detail(details, "chatId", "May not be empty")
    elif strict_ids and not USER_ID.match(chat_id):
        _detail(details, "chatId", "The property, 'chatId', in the request body is invalid")
    seconds = body.get("loadingSeconds", 20)
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        _detail(details, "loadingSeconds", "Must be an integer")
    elif seconds not in LOADING_SECONDS:
        _detail(details, "loadingSeconds", "Must be a multiple of 5 between 5 and 60")
    return details


def check_rich_menu(body: dict[str, Any]) -> Details:
    details: Details = []
    size = body.get("size")
    width = size.get("width") if isinstance(size, dict) else None
    height = size.get("height") if isinstance(size, dict) else None
    if not isinstance(width, int) or not isinstance(height, int):
        _detail(details, "size", "May not be empty")
    elif width < 800 or width > 2500 or height < 250 or width / height < 1.45:
        _detail(details, "size", "Must be 800-2500 wide, at least 250 high, width/height >= 1.45")
    if not isinstance(body.get("selected"), bool):
        _detail(details, "selected", "May not be empty")
    name = body.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 300:
        _detail(details, "name", "Length must be between 1 and 300")
    chat = body.get("chatBarText")
    if not isinstance(chat, str) or not 1 <= len(chat) <= MAX_CHAT_BAR_TEXT:
        _detail(details, "chatBarText", f"Length must be between 1 and {MAX_CHAT_BAR_TEXT}")
    areas = body.get("areas")
    if not isinstance(areas, list) or not 1 <= len(areas) <= MAX_RICH_MENU_AREAS:
        _detail(details, "areas", f"Size must be between 1 and {MAX_RICH_MENU_AREAS}")
        return details
    for i, area in enumerate(areas):
        where = f"areas[{i}]"
        bounds = area.get("bounds") if isinstance(area, dict) else None
        if not isinstance(bounds, dict) or not all(
            isinstance(bounds.get(k), int) for k in ("x", "y", "width", "height")
        ):
            _detail(details, f"{where}.bounds", "May not be empty")
        elif (
            isinstance(width, int)
            and isinstance(height, int)
            and (
                bounds["x"] < 0
                or bounds["y"] < 0
                or bounds["width"] < 1
                or bounds["height"] < 1
                or bounds["x"] + bounds["width"] > width
                or bounds["y"] + bounds["height"] > height
            )
        ):
            _detail(details, f"{where}.bounds", "The area is outside the rich menu")
        check_action(
            area.get("action") if isinstance(area, dict) else None,
            f"{where}.action",
            details,
            label_required=False,
        )
    return details
