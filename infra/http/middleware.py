"""Request id, authentication, metrics and the one place errors become HTTP."""

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from domain.errors import (
    Conflict,
    DataErased,
    DomainError,
    Forbidden,
    IdempotencyKeyReused,
    NotFound,
    RuleViolation,
)
from infra.http.audit import audit_of, record_refusal
from infra.http.headers import request_id as safe_request_id
from infra.http.keys import ACTOR, PUBLIC_PATHS, REQUEST_ID, SERVICES
from infra.http.schemas import Problem
from infra.http.throttle import THROTTLE, too_many
from infra.http.wire import PROBLEM_BASE, HTTPProblem, problem_response
from infra.metrics import HTTP_LATENCY, HTTP_REQUESTS, THROTTLED
from infra.pgerrors import database_unavailable
from services.credentials import Admittance
from services.ports import LedgerUnavailable

log = logging.getLogger("carnet.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A reused Idempotency-Key is the client's error, not a race: 422, as in the
# IETF Idempotency-Key draft, although the domain files it under Conflict.
_STATUS = [
    (DataErased, 410),
    (NotFound, 404),
    (Forbidden, 403),
    (IdempotencyKeyReused, 422),
    (Conflict, 409),
    (RuleViolation, 422),
]


def domain_problem(error: DomainError) -> Problem:
    status = next((s for cls, s in _STATUS if isinstance(error, cls)), 422)
    title = type(error).__name__
    return Problem(
        type=PROBLEM_BASE + error.code,
        title=title,
        status=status,
        detail=error.detail,
        field=error.field,
    )


# The methods a request's metrics are labelled with; any other (WebDAV's, or
# any token at all under aiohttp's pure-Python parser) is counted as "other",
# so that a client cannot mint series without bound.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Echoed below, logged and stored: a client's id is kept only if it is a
    # safe token, else replaced by a fresh one (infra.http.headers).
    request_id = safe_request_id(request.headers.get("X-Request-Id", ""))
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    route = request.match_info.route.resource
    template = route.canonical if route is not None else await _unmatched_template(request)
    status = 500
    try:
        response = await handler(request)
        status = response.status
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        method = method_label(request.method)
        HTTP_REQUESTS.labels(method, template, str(status)).inc()
        HTTP_LATENCY.labels(method, template).observe(time.perf_counter() - started)
    response.headers["X-Request-Id"] = request_id
    return response


async def _unmatched_template(request: web.Request) -> str:
    """A 405's route is the one whose path matched; anything else is `unmatched`."""
    if isinstance(request.match_info.http_exception, web.HTTPMethodNotAllowed):
        for resource in request.app.router.resources():
            found, allowed = await resource.resolve(request)
            if found is None and allowed:
                return resource.canonical
    return "unmatched"


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HTTPProblem as e:
        return problem_response(e.problem, e.headers)
    except DomainError as e:
        return problem_response(domain_problem(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        if e.status == 413:  # a chunked body over the limit, caught while reading it
            return problem_response(
                Problem(
                    type=PROBLEM_BASE + "too-large",
                    title="The body is too large",
                    status=413,
                    field="body",
                )
            )
        return problem_response(
            Problem(type=PROBLEM_BASE + "http", title=e.reason, status=e.status),
            {k: v for k, v in e.headers.items() if k in {"Allow"}},
        )
    except Exception as e:
        if database_unavailable(e):
            log.warning("database unreachable: %r", e)
            ledger = isinstance(e, LedgerUnavailable)
            return problem_response(
                Problem(
                    type=PROBLEM_BASE + ("ledger-unavailable" if ledger else "unavailable"),
                    title="Service Unavailable",
                    status=503,
                    detail=(
                        "the access ledger could not record this request, so nothing was "
                        "disclosed; retry shortly"
                        if ledger
                        else "the database is unreachable; retry shortly"
                    ),
                ),
                {"Retry-After": "5"},
            )
        # Logged with its trace here; the client gets no trace, only a reference.
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem_response(
            Problem(
                type=PROBLEM_BASE + "internal",
                title="Internal Server Error",
                status=500,
                detail=f"reference {request.get(REQUEST_ID, '')}",
            )
        )


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise HTTPProblem(
            401,
            "unauthenticated",
            "Bearer token required",
            field="Authorization",
            headers={"WWW-Authenticate": 'Bearer realm="carnet"'},
        )
    secret = secret.strip()
    credentials = request.app[SERVICES].credentials
    # Tokens are printable ASCII: any other bytes name no token (and would not
    # even encode), so they get the unknown token's answer without a look-up.
    known_form = secret.isascii() and secret.isprintable() and len(secret) <= 512
    # One statement: the token's row, read fresh, and one unit of its shared
    # budget taken (infra/admission.py). A known token that may no longer be
    # used (revoked, suspended, expired) pays too: its attempts on personal
    # data are still accesses to record, each a ledger write, and its rate
    # limit bounds them; past it nothing more is written.
    limit = request.app[THROTTLE].policy.limit
    admitted = await credentials.admit(secret, limit) if known_form else Admittance(None, None)
    if admitted.wait:
        # No access entry: otherwise the limit would bound nothing the ledger pays.
        THROTTLED.labels("rate").inc()
        raise too_many(admitted.wait, "slow down")
    if admitted.actor is None:
        holder = admitted.holder
        audit = audit_of(request)
        if holder is not None and holder.token_id is not None and audit is not None:
            await record_refusal(request, holder, audit, "denied")
        raise HTTPProblem(
            401,
            "unauthenticated",
            "Unknown, expired, revoked or suspended token",
            field="Authorization",
            headers={"WWW-Authenticate": 'Bearer realm="carnet", error="invalid_token"'},
        )
    request[ACTOR] = admitted.actor
    return await handler(request)
