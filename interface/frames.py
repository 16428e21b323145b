"""What a WebSocket client sees of group positions and presence events (pure).

Two kinds of reply message are not plain frames, and become text frames here:

* A message carrying a history position (``layers.groups.HISTORY_KEY``, set by the layer on
  every message of a group with history, live or replayed): when its text is a demultiplexer
  frame (a JSON object starting ``{"stream"``), the position is added to it as two keys,
  ``{"stream": ..., "payload": ..., "offset": 17, "epoch": "9f2c..."}``; any other frame is
  sent as it is, without the position.
* A presence event ``{"presence": "join" | "leave", "group": ..., "channel": ..., "info": ...}``
  becomes a text frame holding that object as JSON.

The format is written down in ``docs/presence-history.rst`` (the browser client reads it).
"""

from __future__ import annotations

import json
from typing import Any, Final

from layers.groups import HISTORY_KEY

__all__ = ["EVENT_KEYS", "websocket_frame"]

#: The keys of a presence event.
EVENT_KEYS: Final = frozenset({"presence", "group", "channel", "info"})
_STREAM_FRAME: Final = '{"stream"'


def websocket_frame(message: dict[str, Any]) -> dict[str, Any]:
    """*message* as a plain WebSocket reply (``text``/``bytes``/``close``/``accept``).

    Only messages with a position or presence events change; others come back as they are.
    """
    if "presence" in message and message.keys() <= EVENT_KEYS:
        return {
            "text": json.dumps({key: message.get(key) for key in ("presence", "group", "channel", "info")})
        }
    if HISTORY_KEY not in message:
        return message
    reply = dict(message)
    place = reply.pop(HISTORY_KEY)
    text = reply.get("text")
    if (
        isinstance(text, str)
        and text.startswith(_STREAM_FRAME)
        and text.endswith("}")
        and isinstance(place, dict)
        and type(place.get("offset")) is int
    ):
        reply["text"] = (
            f'{text[:-1]}, "offset": {place["offset"]}, "epoch": {json.dumps(str(place.get("epoch")))}}}'
        )
    return reply
