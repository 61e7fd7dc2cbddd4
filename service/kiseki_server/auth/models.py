"""Wire models of the access-control API (/api/v1/users, /tokens, /experiments/{id}/permissions, /audit)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kiseki.models import INT64_MAX
from kiseki_server.auth.credentials import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$"
"""User names: letters, digits and . _ @ - (no spaces, no colon: they travel in HTTP Basic)."""

ScopeName = Literal["read", "write", "admin"]
LevelName = Literal["none", "read", "edit", "manage"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class User(BaseModel):
    user_id: str
    name: str
    kind: Literal["user", "service"]
    is_admin: bool
    has_password: bool
    created_at: int
    disabled_at: int | None = None


class UserList(BaseModel):
    users: list[User]


class UserCreate(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description="Unique name; letters, digits and . _ @ -")
    kind: Literal["user", "service"] = "user"
    is_admin: bool = False
    password: str | None = Field(
        default=None,
        min_length=MIN_PASSWORD_LENGTH,
        max_length=MAX_PASSWORD_LENGTH,
        description="For browser login and HTTP Basic; optional. Must not look like an API token.",
    )


class UserUpdate(_Strict):
    is_admin: bool | None = None
    disabled: bool | None = Field(default=None, description="true: every token and session stops working.")
    password: str | None = Field(
        default=None,
        min_length=MIN_PASSWORD_LENGTH,
        max_length=MAX_PASSWORD_LENGTH,
        description="A new password (signs the user out of every browser session).",
    )


class Token(BaseModel):
    token_id: str
    user: str
    name: str
    scope: ScopeName
    created_at: int
    expires_at: int | None = None
    last_used_at: int | None = None
    revoked_at: int | None = None


class TokenList(BaseModel):
    tokens: list[Token]


class TokenCreate(_Strict):
    name: str = Field(default="", max_length=200, description="What the token is for.")
    scope: ScopeName = "write"
    expires_in_seconds: int | None = Field(
        default=None, ge=60, le=INT64_MAX // 1000, description="Unset: the token never expires."
    )
    user: str | None = Field(
        default=None, description="Admins only: create the token for this user (default: yourself)."
    )


class TokenCreated(BaseModel):
    token: str = Field(description="The secret: shown this once, never stored.")
    info: Token


class WhoAmI(BaseModel):
    user: str
    is_admin: bool
    scope: ScopeName
    via: str
    auth_enabled: bool


class Permission(BaseModel):
    experiment_id: str
    user: str
    level: LevelName


class PermissionList(BaseModel):
    permissions: list[Permission]
    default: LevelName = Field(description="What users without a permission of their own get.")


class PermissionSet(_Strict):
    level: LevelName


class AuditEvent(BaseModel):
    event_id: str
    at: int
    user: str | None
    action: str
    target_type: str
    target_id: str
    detail: dict[str, Any]
    client: str | None


class AuditList(BaseModel):
    events: list[AuditEvent]
    next_page_token: str | None = None
