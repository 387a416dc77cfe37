"""The built-in JWT authenticator (DESIGN §5), over a real socket.

Refused before accept (HTTP 403): alg none, a bad signature, a wrong audience or
issuer, an expired token. Accepted tokens are read from the Authorization
header, the ``token`` query parameter or a ``bearer.<token>`` subprotocol; when
one expires during the connection the server closes with 4401.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from websockets.exceptions import InvalidStatus

from router import JWTAuthenticator

from .conftest import Server, recv_json, serve, wait_for, ws_connect
from .helpers import frames_before_pong, frames_until_closed

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def token(claims: dict[str, Any] | None = None, *, key: str = SECRET, alg: str = "HS256") -> str:
    body: dict[str, Any] = {"sub": "alice", "exp": int(time.time()) + 3600}
    body.update(claims or {})
    return jwt.encode(body, key, algorithm=alg)


@pytest.fixture
async def server(router_factory: Any) -> AsyncIterator[Server]:
    auth = JWTAuthenticator(SECRET, audience="agents", issuer="https://issuer.example")
    async with serve(router_factory(), authenticate=auth) as server:
        yield server


GOOD = {"aud": "agents", "iss": "https://issuer.example"}


async def test_valid_token_in_query_connects_as_its_subject(server: Server) -> None:
    ws = await ws_connect(server, None, f"token={token(GOOD)}")
    try:
        assert (await recv_json(ws))["user_id"] == "alice"
    finally:
        await ws.close()


async def test_valid_token_in_authorization_header(server: Server) -> None:
    headers = {"Authorization": f"Bearer {token({**GOOD, 'sub': 'bob'})}"}
    ws = await ws_connect(server, None, additional_headers=headers)
    try:
        assert (await recv_json(ws))["user_id"] == "bob"
    finally:
        await ws.close()


async def test_valid_token_in_bearer_subprotocol(server: Server) -> None:
    protocols: Any = [f"bearer.{token(GOOD)}", "agent-router.v1"]
    ws = await ws_connect(server, None, subprotocols=protocols)
    try:
        assert ws.subprotocol == "agent-router.v1"
        assert (await recv_json(ws))["user_id"] == "alice"
    finally:
        await ws.close()


def alg_none() -> str:
    return jwt.encode({"sub": "alice", **GOOD}, None, algorithm="none")


REFUSED = {
    "alg_none": alg_none,
    "bad_signature": lambda: token(GOOD, key="another-secret-that-is-long-enough-too"),
    "wrong_audience": lambda: token({**GOOD, "aud": "someone-else"}),
    "no_audience": lambda: token({"iss": GOOD["iss"]}),
    "wrong_issuer": lambda: token({**GOOD, "iss": "https://evil.example"}),
    "expired": lambda: token({**GOOD, "exp": int(time.time()) - 30}),
    "not_yet_valid": lambda: token({**GOOD, "nbf": int(time.time()) + 3600}),
    "bad_subject": lambda: token({**GOOD, "sub": "not a user id"}),
    "no_subject": lambda: jwt.encode({**GOOD, "exp": int(time.time()) + 60}, SECRET),
    "garbage": lambda: "not.a.jwt",
    "tampered": lambda: token(GOOD)[:-4] + "AAAA",
}


@pytest.mark.parametrize("make", REFUSED.values(), ids=REFUSED.keys())
async def test_unacceptable_token_is_refused_with_403(server: Server, make: Any) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await ws_connect(server, None, f"token={make()}")
    assert refused.value.response.status_code == 403


async def test_connection_is_closed_with_4401_when_its_token_expires(server: Server) -> None:
    expires = math.ceil(time.time() + 1.5)  # 1.5 to 2.5 s from now: enough to connect
    ws = await ws_connect(server, None, f"token={token({**GOOD, 'exp': expires})}")
    try:
        assert (await recv_json(ws))["op"] == "welcome"
        assert await frames_before_pong(ws) == []  # fine while the token is valid
        frames, code = await frames_until_closed(ws, within=10)
        assert frames == []
        assert code == 4401
        assert time.time() >= expires
        assert server.router is not None
        await wait_for(lambda: len(server.router.hub) == 0, what="the connection to go")
    finally:
        await ws.close()


def test_authenticator_refuses_to_be_configured_with_alg_none() -> None:
    with pytest.raises(ValueError):
        JWTAuthenticator(SECRET, algorithms=("none",))
    with pytest.raises(ValueError):
        JWTAuthenticator(SECRET, algorithms=())
