"""The ChatMessage "model": a table in SQLite (sqlite3 blocks, so consumers call it in a thread)."""

import os
import sqlite3
import sys

#: Where messages are stored (set CHAT_DATABASE to choose).
DATABASE = os.environ.get("CHAT_DATABASE", "chat-messages.sqlite3")
SCHEMA = "CREATE TABLE IF NOT EXISTS chat_message (id INTEGER PRIMARY KEY, room TEXT, message TEXT)"


def save_message(room, message):
    with sqlite3.connect(DATABASE) as db:
        db.execute(SCHEMA)
        db.execute("INSERT INTO chat_message (room, message) VALUES (?, ?)", (room, message))


def messages_in(room):
    with sqlite3.connect(DATABASE) as db:
        db.execute(SCHEMA)
        rows = db.execute("SELECT message FROM chat_message WHERE room = ? ORDER BY id", (room,))
        return [message for (message,) in rows]


if __name__ == "__main__":
    # python -m models.models ROOM: the room's messages, oldest first
    for message in messages_in(sys.argv[1]):
        print(message)
