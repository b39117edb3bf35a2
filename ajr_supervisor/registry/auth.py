"""Bearer tokens and roles.

A token is ``ajr_`` + 32 random bytes (URL-safe base64); only its SHA-256 is stored, so a token is
shown once, at creation, and never again. Roles: ``supervisor`` (may only send events), ``user``
(reads the jobs of its subject, a Unix user name), ``admin`` (everything, actions included).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from ajr_supervisor.errors import UsageError
from ajr_supervisor.registry.db import Database
from ajr_supervisor.registry.models import tokens

ROLES = ("supervisor", "user", "admin")
PREFIX = "ajr_"


class TokenError(UsageError):
    """A token operation the user asked for cannot be done (bad role, unknown token...)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name, role and subject (user role: the Unix user)."""

    name: str
    role: str
    subject: str | None = None

    @property
    def who(self) -> str:
        """How the audit names this caller."""
        return f"{self.name} ({self.subject})" if self.subject else self.name


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_token(db: Database, role: str, *, subject: str | None = None, name: str | None = None,
                 clock: Callable[[], float] = time.time) -> tuple[str, dict]:
    """Make and store a token; returns ``(token, row)``. The token itself is not stored."""
    if role not in ROLES:
        raise TokenError(f"unknown role {role!r}", f"use one of {', '.join(ROLES)}")
    if role == "user" and not subject:
        raise TokenError("a user token needs --subject (the Unix user whose jobs it may read)",
                         "e.g. ajr registry token create --role user --subject alice")
    if subject is not None and not (0 < len(subject) <= 64):
        raise TokenError("--subject must be 1 to 64 characters")
    token = PREFIX + secrets.token_urlsafe(32)
    name = name or f"{role}-{subject + '-' if subject else ''}{secrets.token_hex(3)}"
    if not 0 < len(name) <= 128:
        raise TokenError("--name must be 1 to 128 characters")
    row = {"name": name, "role": role, "subject": subject, "token_hash": hash_token(token),
           "created_at": clock(), "revoked_at": None}
    try:
        with db.write() as conn:
            row["id"] = conn.execute(insert(tokens).values(**row).returning(tokens.c.id)).scalar_one()
    except IntegrityError:
        raise TokenError(f"a token named {name!r} already exists", "choose another --name") from None
    return token, {k: v for k, v in row.items() if k != "token_hash"}


def list_tokens(db: Database) -> list[dict]:
    cols = [tokens.c.id, tokens.c.name, tokens.c.role, tokens.c.subject, tokens.c.created_at, tokens.c.revoked_at]
    with db.read() as conn:
        return [dict(r._mapping) for r in conn.execute(select(*cols).order_by(tokens.c.id))]


def revoke_token(db: Database, name_or_id: str, *, clock: Callable[[], float] = time.time) -> dict:
    """Revoke the token with this name (or numeric id); revoking twice is an error."""
    where = tokens.c.name == name_or_id
    if name_or_id.isdigit():
        where = or_(where, tokens.c.id == int(name_or_id))
    with db.write() as conn:
        rows = conn.execute(select(tokens.c.id, tokens.c.name, tokens.c.revoked_at).where(where)).all()
        if not rows:
            raise TokenError(f"no token named {name_or_id!r}", "see `ajr registry token list`")
        if len(rows) > 1:
            raise TokenError(f"{name_or_id!r} names more than one token", "revoke it by name")
        row = rows[0]
        if row.revoked_at is not None:
            raise TokenError(f"token {row.name!r} is already revoked")
        conn.execute(update(tokens).where(tokens.c.id == row.id).values(revoked_at=clock()))
        return {"id": row.id, "name": row.name}


def authenticate(db: Database, authorization: str | None) -> Principal | None:
    """The caller of an ``Authorization: Bearer <token>`` header, or ``None`` (missing, malformed,
    unknown or revoked token)."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(PREFIX) or len(token) > 200:
        return None
    with db.read() as conn:
        row = conn.execute(select(tokens.c.name, tokens.c.role, tokens.c.subject)
                           .where(tokens.c.token_hash == hash_token(token), tokens.c.revoked_at.is_(None))).first()
    return Principal(row.name, row.role, row.subject) if row else None


class TokenCache:
    """:func:`authenticate` with the answers for valid tokens remembered ``ttl_s`` (0: not at all), so
    a busy sender does not cost a query per request. A revoked token stops working within ``ttl_s``."""

    def __init__(self, db: Database, ttl_s: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.db, self.ttl_s, self.monotonic = db, ttl_s, monotonic
        self._known: dict[str, tuple[float, Principal]] = {}

    def cached(self, authorization: str | None) -> Principal | None:
        hit = self._known.get(authorization or "")
        if hit is not None and self.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        return None

    def authenticate(self, authorization: str | None) -> Principal | None:
        who = self.cached(authorization)
        if who is None:
            who = authenticate(self.db, authorization)
            if who is not None and self.ttl_s > 0 and authorization:
                if len(self._known) > 10_000:
                    self._known.clear()
                self._known[authorization] = (self.monotonic(), who)
        return who
