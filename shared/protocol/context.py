"""Per-request facts shared down the call stack (through a contextvar).

Kept apart from ``protocol`` so that ``storage`` can count its round trips
without importing the HTTP layer (no import cycle): ``protocol`` opens and
closes the context, ``storage`` counts into it, the domain reads it.
"""

from __future__ import annotations

import contextvars
import dataclasses


@dataclasses.dataclass
class Context:
    request_id: str
    correlation_id: str
    client_ip: str | None
    locale: str | None
    storage_ops: int = 0
    storage_trace: list = dataclasses.field(default_factory=list)   # "table.operation", in order
    outcome: str = ""
    extra: dict = dataclasses.field(default_factory=dict)


_context: contextvars.ContextVar[Context | None] = contextvars.ContextVar("nativeauth_request", default=None)


def current() -> Context | None:
    return _context.get()


def enter(ctx: Context) -> contextvars.Token:
    return _context.set(ctx)


def leave(token: contextvars.Token) -> None:
    _context.reset(token)


def count_storage_op(n: int = 1, what: str = "") -> None:
    ctx = _context.get()
    if ctx is not None:
        ctx.storage_ops += n
        ctx.storage_trace.append(what)
