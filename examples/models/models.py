"""The ChatMessage "model": a SQLite table. Blocking calls, run in a thread by the consumer."""

import os
import sqlite3

#: Where messages are stored (set TRIO_CHANNELS_CHAT_DB to choose).
DATABASE = os.environ.get("TRIO_CHANNELS_CHAT_DB", "chat-messages.sqlite3")


def save_message(room, text, database=None):
    with sqlite3.connect(database or DATABASE) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS chat_message (id INTEGER PRIMARY KEY, room TEXT, message TEXT)"
        )
        db.execute("INSERT INTO chat_message (room, message) VALUES (?, ?)", (room, text))


def messages_in(room, database=None):
    with sqlite3.connect(database or DATABASE) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS chat_message (id INTEGER PRIMARY KEY, room TEXT, message TEXT)"
        )
        return [
            text
            for (text,) in db.execute("SELECT message FROM chat_message WHERE room = ? ORDER BY id", (room,))
        ]
