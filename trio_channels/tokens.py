"""Bearer tokens: where a connection carries one, and a ready JWT verifier.

A client that cannot send cookies (a mobile app, a script, a page on another domain) sends a
bearer token instead, in one of three places, looked at in this order:

``header``
    ``Authorization: Bearer <token>`` (RFC 6750 §2.1). HTTP clients and non-browser WebSocket
    clients; browsers cannot set headers on a WebSocket.
``subprotocol``
    a WebSocket subprotocol ``base64url.bearer.authorization.k8s.io.<token, base64url without
    padding>``, the convention of the Kubernetes API server (and clients written for it):
    ``new WebSocket(url, ["chat", "base64url.bearer.authorization.k8s.io." + b64url(token)])``.
    The token subprotocol is never the one the server accepts: it accepts the first offered one
    in ``InterfaceConfig.ws_protocols``, or none. Browsers fail a handshake answered with none of
    their subprotocols, so offer a served one (``"chat"`` above) beside the token.
``query``
    ``?token=<token>``. Easy from a browser, but URLs end up in proxy logs and browser
    history: prefer short-lived tokens there.

A *verifier* is ``async def verify(token: str) -> user``: it returns the user the token stands
for or raises :exc:`InvalidToken` (any other exception counts as a failed verification too).
:class:`JWTVerifier` is one for JSON Web Tokens (``pip install 'trio-channels[jwt]'``). The
decorators that use them are :func:`trio_channels.auth.token_user` and
:func:`trio_channels.auth.channel_session_user_from_token`.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .channel import Message

if TYPE_CHECKING:
    from jwt.algorithms import AllowedPublicKeys

__all__ = [
    "BEARER_SUBPROTOCOL_PREFIX",
    "InvalidToken",
    "JWTVerifier",
    "TokenSource",
    "TokenUser",
    "TokenVerifier",
    "bearer_subprotocol",
    "bearer_token",
]

#: The subprotocol prefix that carries a base64url-encoded bearer token (Kubernetes' convention).
BEARER_SUBPROTOCOL_PREFIX = "base64url.bearer.authorization.k8s.io."

TokenSource = Literal["header", "subprotocol", "query"]
#: ``async def verify(token: str) -> user``; raises :exc:`InvalidToken` for a bad token.
TokenVerifier = Callable[[str], Awaitable[Any]]


class InvalidToken(Exception):
    """A token was refused; the message says why (it is logged, never sent to the client)."""


def bearer_subprotocol(token: str, prefix: str = BEARER_SUBPROTOCOL_PREFIX) -> str:
    """The WebSocket subprotocol that carries *token* (for Python clients and tests)."""
    encoded = base64.urlsafe_b64encode(token.encode("utf-8")).rstrip(b"=").decode("ascii")
    return prefix + encoded


def _from_header(headers: Sequence[Sequence[bytes]]) -> str | None:
    for name, value in headers:
        if bytes(name).lower() == b"authorization":
            scheme, _, credentials = bytes(value).decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer":
                return credentials.strip()
    return None


def _from_subprotocols(subprotocols: Sequence[str], prefix: str) -> str | None:
    for offered in subprotocols:
        if offered.startswith(prefix):
            encoded = offered[len(prefix) :]
            try:
                padded = encoded + "=" * (-len(encoded) % 4)
                return base64.b64decode(padded, altchars=b"-_", validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                raise InvalidToken(f"the {prefix}* subprotocol does not hold base64url text") from None
    return None


def _from_query(query_string: bytes | str, name: str) -> str | None:
    query = query_string.decode("latin-1") if isinstance(query_string, bytes) else query_string
    values = urllib.parse.parse_qs(query).get(name)
    return values[0] if values else None


def bearer_token(
    message: Message,
    *,
    sources: Collection[TokenSource] = ("header", "subprotocol", "query"),
    query_param: str = "token",
    subprotocol_prefix: str = BEARER_SUBPROTOCOL_PREFIX,
) -> tuple[TokenSource, str] | None:
    """The bearer token *message* carries and where it was found, or ``None`` if it has none.

    Looks in the ``Authorization`` header, then the subprotocols, then the query string (each
    only if it is in *sources*). An empty token counts as one (and fails verification); a
    subprotocol that is not base64url raises :exc:`InvalidToken`.
    """
    if "header" in sources:
        token = _from_header(message.get("headers") or [])
        if token is not None:
            return "header", token
    if "subprotocol" in sources:
        token = _from_subprotocols(message.get("subprotocols") or [], subprotocol_prefix)
        if token is not None:
            return "subprotocol", token
    if "query" in sources:
        token = _from_query(message.get("query_string") or b"", query_param)
        if token is not None:
            return "query", token
    return None


# ----------------------------------------------------------------------------- JWT


@attrs.frozen
class TokenUser:
    """The user :class:`JWTVerifier` returns by default: the ``sub`` claim and all the claims."""

    id: Any
    claims: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    is_authenticated: bool = True
    is_anonymous: bool = False

    @property
    def username(self) -> str:
        """``preferred_username`` (OpenID Connect), else ``username``, else the subject."""
        return str(self.claims.get("preferred_username") or self.claims.get("username") or self.id)


async def _token_user(claims: dict[str, Any]) -> TokenUser:
    return TokenUser(claims["sub"], claims)


_HMAC = frozenset({"HS256", "HS384", "HS512"})
_PUBLIC_KEY = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def _names(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _algorithms(instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("algorithms must name at least one algorithm, e.g. ('HS256',) or ('RS256',)")
    unknown = [name for name in value if name not in _HMAC | _PUBLIC_KEY]
    if unknown:
        raise ValueError(
            f"algorithms {unknown!r} are not accepted: use HMAC ({', '.join(sorted(_HMAC))}) or "
            f"public-key ({', '.join(sorted(_PUBLIC_KEY))}) algorithms ('none' never is)"
        )
    if set(value) & _HMAC and set(value) & _PUBLIC_KEY:
        raise ValueError(
            f"algorithms {list(value)!r} mix HMAC and public-key algorithms: one key cannot be both "
            "(a public key used as an HMAC secret lets anyone sign); make one verifier per kind"
        )


def _leeway(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not isinstance(value, int | float) or value < 0:
        raise ValueError(f"leeway must be a number of seconds >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class JWTVerifier:
    """Verify JSON Web Tokens with PyJWT: ``@token_user(JWTVerifier(key=..., algorithms=...))``.

    *key* is the HMAC secret (``HS256``/``HS384``/``HS512``) or the public key — a PEM string
    or bytes, or a ``cryptography`` key — for ``RS*``, ``PS*``, ``ES*`` and ``EdDSA``.
    *algorithms* lists the accepted ones (never ``none``, and never HMAC and public-key
    together). The signature, ``exp`` (required unless removed from *require*), ``nbf`` and
    ``iat`` are checked with *leeway* seconds of clock skew; ``aud`` must contain *audience*
    and ``iss`` equal *issuer* when those are given. *user* turns the verified claims into the
    user (default: a :class:`TokenUser` from ``sub``).

    Calling it raises :exc:`InvalidToken` saying what was wrong: bad signature, expired, wrong
    audience or issuer, a missing claim, an algorithm not accepted, or not a JWT at all.
    Raises :exc:`ImportError` at construction without PyJWT, and :exc:`ValueError` for bad
    options.
    """

    key: str | bytes | AllowedPublicKeys = attrs.field(repr=False)
    algorithms: tuple[str, ...] = attrs.field(converter=_names, validator=_algorithms)
    audience: str | Sequence[str] | None = None
    issuer: str | None = None
    leeway: float = attrs.field(default=0, validator=_leeway)
    require: tuple[str, ...] = attrs.field(default=("exp", "sub"), converter=_names)
    user: Callable[[dict[str, Any]], Awaitable[Any]] = _token_user

    def __attrs_post_init__(self) -> None:
        if importlib.util.find_spec("jwt") is None:
            raise ImportError("JWTVerifier needs PyJWT: pip install 'trio-channels[jwt]' (or PyJWT[crypto])")

    async def __call__(self, token: str) -> Any:
        """The user *token* stands for; :exc:`InvalidToken` naming the reason if it is refused."""
        import jwt

        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": list(self.require)},
            )
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"{type(exc).__name__}: {exc}") from None
        except jwt.PyJWTError as exc:  # a key of the wrong kind for the token's algorithm
            raise InvalidToken(f"{type(exc).__name__}: {exc}") from None
        return await self.user(claims)
