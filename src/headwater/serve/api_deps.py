"""Dependencies of the query API's routes: the home, and the caller's principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from headwater.config import Home
from headwater.serve.access import Principal

# auto_error=False: a missing token is answered by TokenStore.authenticate (401, the API's
# error form) rather than by FastAPI's own 403. Declared here so OpenAPI lists the scheme.
_bearer = HTTPBearer(auto_error=False, description="A read token: `headwater token add --role viewer|analyst|admin`.")


# Both are async: FastAPI runs a sync dependency in its thread pool, a thread hop per request
# for a dict lookup, and a hash and a stat (tokens.json, reread only when it changed).
async def home(request: Request) -> Home:
    return request.app.state.home


async def principal(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    """The principal of the request's bearer token; :class:`UnauthorizedError` (401) without one."""
    return request.app.state.tokens.authenticate(credentials.credentials if credentials else None)


HomeDep = Annotated[Home, Depends(home)]
PrincipalDep = Annotated[Principal, Depends(principal)]
