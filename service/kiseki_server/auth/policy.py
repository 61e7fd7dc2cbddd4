"""Who may do what: credential scopes, experiment permission levels, the access a route needs, and the
principal a request acts as. Pure data: no I/O here (see auth.authorizer for the checks)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Literal


class Scope(IntEnum):
    """What a credential may do at all, whatever the experiment permissions: a `read` token never writes."""

    READ = 1
    WRITE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Scope:
        return cls[text.upper()]


class Level(IntEnum):
    """A user's permission on one experiment (MLflow's model; NONE hides an experiment from a user)."""

    NONE = 0
    READ = 1
    EDIT = 2
    MANAGE = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Level:
        return cls[text.upper()]


Target = Literal["none", "path", "handler"]


@dataclass(frozen=True, slots=True)
class Access:
    """What a route requires: the credential's scope, and (`level`) a permission on the experiment the
    request addresses. `target` says where that experiment is found: "path" — the route's
    `{experiment_id}` or `{run_id}`, checked before the handler runs; "handler" — ids in the body or the
    query, checked by the handler (or enforced by the store's search scope); "none" — not bound to one
    experiment (creating one, listing what the caller may read, admin routes)."""

    scope: Scope
    level: Level | None = None
    target: Target = "none"
    admin_only: bool = False
    """The caller must be an admin user (and hold an admin-scoped credential)."""

    def describe(self) -> str:
        parts = [f"a {self.scope.label}-scoped credential"]
        if self.admin_only:
            parts.append("an admin user")
        if self.level is not None:
            parts.append(f"{self.level.label.upper()} permission on the experiment")
        return "Requires " + " and ".join(parts) + " (when authentication is on)."


# The access levels routes use, by name.
READ = Access(Scope.READ)
"""Listings and searches: they only ever show what the caller may read."""
WRITE = Access(Scope.WRITE)
READ_PATH = Access(Scope.READ, Level.READ, "path")
EDIT_PATH = Access(Scope.WRITE, Level.EDIT, "path")
MANAGE_PATH = Access(Scope.WRITE, Level.MANAGE, "path")
READ_HANDLER = Access(Scope.READ, Level.READ, "handler")
EDIT_HANDLER = Access(Scope.WRITE, Level.EDIT, "handler")
MANAGE_HANDLER = Access(Scope.WRITE, Level.MANAGE, "handler")
ADMIN = Access(Scope.ADMIN, admin_only=True)

Via = Literal["token", "session", "password", "anonymous"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The identity a request acts as, and what its credential allows."""

    user_id: int | None
    """None only for the anonymous principal of a server with authentication off."""
    name: str
    is_admin: bool
    scope: Scope
    via: Via
    token_id: int | None = None
    csrf_token: str | None = None
    """A browser session's CSRF token (forms must send it back)."""

    @property
    def sees_everything(self) -> bool:
        """Admins (and everyone, with authentication off) pass every experiment permission check."""
        return self.is_admin


ANONYMOUS = Principal(user_id=None, name="anonymous", is_admin=True, scope=Scope.ADMIN, via="anonymous")
"""Every request's principal when authentication is off: kiseki as it always was, open to all."""


@dataclass(frozen=True, slots=True)
class Reader:
    """Whose read permission a store's search scope applies: the user and the server's default level for
    experiments where the user has no explicit permission."""

    user_id: int
    default: Level


def reader_of(principal: Principal, default: Level) -> Reader | None:
    """None when the principal may read every experiment (no scope condition at all)."""
    if principal.sees_everything or principal.user_id is None:
        return None
    return Reader(principal.user_id, default)
