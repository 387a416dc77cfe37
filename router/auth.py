"""Authentication of WebSocket connections.

The application supplies ``authenticate(conn) -> user_id | Principal | None``
(sync or async; ``conn`` is a Starlette ``HTTPConnection``). Returning a
:class:`Principal` instead of a bare user id lets it say when the credential
expires: the middleware then closes the connection with 4401 at that moment.

:class:`JWTAuthenticator` is the built-in one (needs the ``jwt`` extra: PyJWT).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import HTTPConnection

__all__ = ["Authenticate", "JWTAuthenticator", "Principal", "bearer_token"]

#: The subprotocol a browser offers to carry a token: ``bearer.<token>``.
BEARER_SUBPROTOCOL_PREFIX = "bearer."


@dataclasses.dataclass(slots=True, frozen=True)
class Principal:
    """An authenticated user, and when the credential expires (unix seconds)."""

    user_id: str
    expires_at: float | None = None


Authenticate = Callable[
    [HTTPConnection], "Awaitable[str | Principal | None] | str | Principal | None"
]


def authorization_bearer(conn: HTTPConnection) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def bearer_token(conn: HTTPConnection) -> str | None:
    """The token a client presented: ``Authorization: Bearer``, the ``token`` query
    parameter, or a ``bearer.<token>`` WebSocket subprotocol (in that order)."""
    header = authorization_bearer(conn)
    if header is not None:
        return header
    token = conn.query_params.get("token")
    if token:
        return token
    for protocol in conn.scope.get("subprotocols") or ():
        if protocol.startswith(BEARER_SUBPROTOCOL_PREFIX) and len(protocol) > len(
            BEARER_SUBPROTOCOL_PREFIX
        ):
            return str(protocol[len(BEARER_SUBPROTOCOL_PREFIX) :])
    return None


class JWTAuthenticator:
    """Authenticate connections with a JSON Web Token (PyJWT).

    Refuses ``alg=none``, bad signatures, a wrong audience or issuer, expired
    tokens and tokens whose user claim is not a usable user id. The token's
    ``exp`` is returned in the :class:`Principal`, so the middleware closes the
    connection with 4401 when it passes.
    """

    def __init__(
        self,
        secret_or_key: str | bytes,
        *,
        algorithms: Sequence[str] = ("HS256",),
        audience: str | Sequence[str] | None = None,
        issuer: str | None = None,
        user_claim: str = "sub",
        leeway: float = 0,
    ) -> None:
        try:
            import jwt
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "JWTAuthenticator needs PyJWT: pip install 'agent-event-router[jwt]'"
            ) from exc
        algorithms = tuple(algorithms)
        if not algorithms or any(alg.lower() == "none" for alg in algorithms):
            raise ValueError("algorithms must name at least one real algorithm, never 'none'")
        self._jwt = jwt
        self._key = secret_or_key
        self.algorithms = algorithms
        self.audience = audience
        self.issuer = issuer
        self.user_claim = user_claim
        self.leeway = leeway

    def decode(self, token: str) -> dict[str, Any] | None:
        """The verified claims of ``token``, or None when it is not acceptable."""
        try:
            claims: dict[str, Any] = self._jwt.decode(
                token,
                self._key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
            )
        except self._jwt.PyJWTError:
            return None
        return claims

    def __call__(self, conn: HTTPConnection) -> Principal | None:
        from .ids import is_user_id

        token = bearer_token(conn)
        if not token:
            return None
        claims = self.decode(token)
        if claims is None:
            return None
        user_id = claims.get(self.user_claim)
        if not is_user_id(user_id):
            return None
        exp = claims.get("exp")
        expires_at = float(exp) + self.leeway if isinstance(exp, int | float) else None
        return Principal(str(user_id), expires_at)
