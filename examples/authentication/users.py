"""A stand-in user database: anyone may log in with a name of letters."""

import attrs


@attrs.frozen
class User:
    id: str
    username: str
    is_authenticated: bool = True


async def load_user(user_id):
    # In a real application: look the user up in your database (or return None).
    return User(id=user_id, username=user_id)
