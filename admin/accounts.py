"""Console accounts: users with argon2 password hashes, browser sessions, API tokens and the
failed-login limit. Every secret handed out (session cookie, API token) is random and only
its SHA-256 is stored, so a copy of the database signs nobody in."""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from switchboard.base.settings import Settings
from switchboard.storage.models import ApiToken, ConsoleSession, LoginFailure, User, utcnow

ROLES = ("admin", "supervisor", "agent")
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
PASSWORD_RE = re.compile(r"[^ \t\n\r\f\v](?:[\s\S]*[^ \t\n\r\f\v])?")
"""No space, tab or line break at either end (the API's schema states the same pattern;
explicit characters, as regex engines disagree on what counts as white space)."""
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
TOKEN_PREFIX = "sbt_"
# Allowed per address within the window, as a multiple of the per-user limit: one office
# behind NAT may mistype, but one address may not walk through many user names.
IP_FAILURE_FACTOR = 4

_hasher = PasswordHasher()
_ADMIN_CHANGES = threading.Lock()  # one role change at a time in this process
# Verified when the user name is unknown, so that answer takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """Input a user or admin can fix; the message says what is wrong. ``status`` is the
    HTTP status that says it: 400 bad input, 404 no such user, 409 it clashes with the
    accounts as they are."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def clean_username(username: str) -> str:
    """A typed user name as looked up: trimmed, without NUL bytes, at most 64 characters."""
    return username.replace("\x00", "").strip()[:64]


def validate_username(username: str) -> str:
    username = username.strip()
    if not USERNAME_RE.match(username):
        raise AccountError(
            "user names are 1-64 characters: letters, digits and . _ @ - "
            "(starting with a letter or digit)"
        )
    return username


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"passwords need at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"passwords are at most {MAX_PASSWORD_LENGTH} characters")
    if not PASSWORD_RE.fullmatch(password):
        raise AccountError("passwords may not start or end with spaces")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(validate_password(password))


def has_users(sessions: sessionmaker[Session]) -> bool:
    """Whether anyone can sign in to the console yet."""
    with sessions() as session:
        return session.scalar(select(User.id).limit(1)) is not None


@dataclass(frozen=True)
class UserView:
    """A user as the console shows it (never the password hash)."""

    id: int
    username: str
    role: str
    active: bool
    created_at: datetime
    last_login_at: datetime | None

    @classmethod
    def of(cls, user: User) -> UserView:
        return cls(user.id, user.username, user.role, user.active, user.created_at,
                   user.last_login_at)


@dataclass(frozen=True)
class SessionView:
    user: UserView
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True)
class LoginResult:
    user: UserView | None = None
    locked_for_s: float = 0.0  # > 0: too many failures; nothing was checked

    @property
    def ok(self) -> bool:
        return self.user is not None


@dataclass(frozen=True)
class TokenView:
    id: int
    user_id: int
    username: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class AccountRepository:
    """Users, sessions, API tokens and failed logins; each method is one short transaction."""

    @classmethod
    def from_settings(cls, settings: Settings, sessions: sessionmaker[Session]
                      ) -> AccountRepository:
        return cls(
            sessions,
            session_lifetime=timedelta(hours=settings.console_session_hours),
            max_failures=settings.console_login_max_failures,
            failure_window=timedelta(minutes=settings.console_login_window_minutes),
        )

    def __init__(self, sessions: sessionmaker[Session], *, session_lifetime: timedelta,
                 max_failures: int = 5, failure_window: timedelta = timedelta(minutes=15)
                 ) -> None:
        self._sessions = sessions
        self.session_lifetime = session_lifetime
        self.max_failures = max_failures
        self.failure_window = failure_window

    # --- users ------------------------------------------------------------------------
    def create_user(self, username: str, password: str, role: str) -> UserView:
        username, role = validate_username(username), validate_role(role)
        user = User(username=username, password_hash=hash_password(password), role=role,
                    active=True)
        with self._sessions() as session:
            if session.scalar(select(User.id).where(func.lower(User.username)
                                                    == username.lower())):
                raise AccountError(f"a user named {username!r} already exists", 409)
            session.add(user)
            try:
                session.commit()
            except IntegrityError as exc:
                raise AccountError(f"a user named {username!r} already exists", 409) from exc
            return UserView.of(user)

    def list_users(self) -> list[UserView]:
        with self._sessions() as session:
            return [UserView.of(u) for u in session.scalars(select(User).order_by(User.username))]

    def get_user(self, user_id: int) -> UserView | None:
        with self._sessions() as session:
            user = session.get(User, user_id)
            return UserView.of(user) if user else None

    def find_user(self, username: str) -> UserView | None:
        with self._sessions() as session:
            user = session.scalar(select(User).where(
                func.lower(User.username) == clean_username(username).lower()))
            return UserView.of(user) if user else None

    def count_active_admins(self) -> int:
        with self._sessions() as session:
            return session.scalar(select(func.count(User.id)).where(
                User.role == "admin", User.active.is_(True))) or 0

    def update_user(self, user_id: int, *, role: str, active: bool) -> UserView:
        """Change a user's role or switch them off; the last active admin stays an admin.
        A user switched off or given another role is signed out everywhere."""
        role = validate_role(role)
        with _ADMIN_CHANGES, self._sessions() as session:
            user = session.get(User, user_id)
            if user is None:
                raise AccountError(f"no user with id {user_id}", 404)
            demoted = user.role == "admin" and user.active and (role != "admin" or not active)
            if demoted:
                # Lock the admins' rows (PostgreSQL; the process lock covers SQLite) so two
                # admins demoting each other at once cannot leave none.
                admins = len(list(session.scalars(
                    select(User.id).where(User.role == "admin", User.active.is_(True))
                    .with_for_update())))
                if admins <= 1:
                    raise AccountError(
                        f"{user.username} is the last active admin; make another admin first",
                        409)
            changed = user.role != role or user.active != active
            user.role, user.active = role, active
            if changed:
                session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user_id))
            session.commit()
            return UserView.of(user)

    def set_password(self, user_id: int, password: str) -> None:
        """New password: every session of the user ends, their API tokens are revoked and
        a failed-login lock on their name is lifted."""
        password_hash = hash_password(password)
        with self._sessions() as session:
            user = session.get(User, user_id)
            if user is None:
                raise AccountError(f"no user with id {user_id}", 404)
            user.password_hash = password_hash
            session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user_id))
            for token in session.scalars(select(ApiToken).where(
                    ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))):
                token.revoked_at = utcnow()  # a new password is the answer to a leak
            session.execute(delete(LoginFailure).where(
                LoginFailure.username == user.username.lower()))  # and unlocks sign-in
            session.commit()

    # --- sign-in and the failed-login limit ---------------------------------------------
    def _locked_for(self, session: Session, attempt: LoginFailure) -> float:
        """Seconds until sign-in opens again for the attempt's name/address: locked when
        the limit of attempts in the window was reached *before* this one was recorded.
        Counting only earlier attempts (by id), the first ones of a parallel burst are
        checked and stay as failures, the later ones are refused; counting every attempt,
        all of a burst would see the others, be refused and remove themselves, leaving no
        lock behind."""
        now = utcnow()
        since = now - self.failure_window
        checks = [(LoginFailure.username == attempt.username, self.max_failures)]
        if attempt.ip:
            checks.append((LoginFailure.ip == attempt.ip, self.max_failures * IP_FAILURE_FACTOR))
        for condition, limit in checks:
            times = list(session.scalars(
                select(LoginFailure.at)
                .where(condition, LoginFailure.at >= since, LoginFailure.id < attempt.id)
                .order_by(LoginFailure.id.desc()).limit(limit)))
            if len(times) >= limit:
                oldest = min(times)
                return max(1.0, (oldest + self.failure_window - now).total_seconds())
        return 0.0

    def authenticate(self, username: str, password: str, *, ip: str | None) -> LoginResult:
        """Check a password. After ``max_failures`` failures for a name (or four times that
        from one address) within the window, nothing is checked until the window passes.

        The attempt is counted *before* the slow hash check (and uncounted when it
        succeeds), so guesses sent in parallel cannot all slip under the limit."""
        username = clean_username(username)
        key = username.lower()[:64]
        ip = ip[:64] if ip else None
        with self._sessions() as session:
            attempt = LoginFailure(username=key, ip=ip)
            session.add(attempt)
            session.commit()
            locked = self._locked_for(session, attempt)
            if locked:
                session.delete(attempt)  # a refused attempt does not extend the lock
                session.commit()
                return LoginResult(locked_for_s=locked)
            user = session.scalar(select(User).where(func.lower(User.username) == key))
            stored = user.password_hash if user is not None and user.active else _DUMMY_HASH
            try:
                _hasher.verify(stored, password[:MAX_PASSWORD_LENGTH])
                valid = user is not None and user.active
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                valid = False
            if not valid or user is None:
                return LoginResult()  # the recorded attempt stays: a failure
            if _hasher.check_needs_rehash(user.password_hash):
                user.password_hash = _hasher.hash(password)
            user.last_login_at = utcnow()
            session.execute(delete(LoginFailure).where(LoginFailure.username == key))
            cutoff = utcnow() - self.failure_window
            session.execute(delete(LoginFailure).where(LoginFailure.at < cutoff))
            session.commit()
            return LoginResult(user=UserView.of(user))

    # --- browser sessions ---------------------------------------------------------------
    def start_session(self, user_id: int, *, ip: str | None, user_agent: str | None
                      ) -> tuple[str, SessionView]:
        """A new session; returns the cookie value (shown once) and the session."""
        token = secrets.token_urlsafe(32)
        now = utcnow()
        with self._sessions() as session:
            user = session.get(User, user_id)
            if user is None:
                raise AccountError(f"no user with id {user_id}", 404)
            row = ConsoleSession(
                token_hash=_sha256(token), user_id=user_id, csrf_token=secrets.token_urlsafe(32),
                created_at=now, expires_at=now + self.session_lifetime, last_seen_at=now,
                ip=ip, user_agent=(user_agent or "")[:255] or None,
            )
            session.add(row)
            session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now))
            session.commit()
            return token, SessionView(UserView.of(user), row.csrf_token, row.expires_at)

    def session_for(self, token: str) -> SessionView | None:
        """The live session of a cookie value, or None (unknown, expired, user switched off)."""
        if not token or len(token) > 200 or "\x00" in token:
            return None
        with self._sessions() as session:
            row = session.get(ConsoleSession, _sha256(token))
            if row is None:
                return None
            now = utcnow()
            if row.expires_at <= now:
                session.delete(row)
                session.commit()
                return None
            user = session.get(User, row.user_id)
            if user is None or not user.active:
                return None
            if (now - row.last_seen_at) > timedelta(minutes=1):
                row.last_seen_at = now
                session.commit()
            return SessionView(UserView.of(user), row.csrf_token, row.expires_at)

    def end_session(self, token: str) -> None:
        with self._sessions() as session:
            session.execute(delete(ConsoleSession).where(
                ConsoleSession.token_hash == _sha256(token)))
            session.commit()

    # --- API tokens ---------------------------------------------------------------------
    def create_token(self, user_id: int, name: str) -> tuple[str, TokenView]:
        """A new API token for the user; the token itself is returned only here."""
        name = name.strip()
        if not name or len(name) > 64 or not name.isprintable():
            raise AccountError("give the token a name of 1-64 printable characters (what "
                               "uses it)")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._sessions() as session:
            user = session.get(User, user_id)
            if user is None:
                raise AccountError(f"no user with id {user_id}", 404)
            row = ApiToken(user_id=user_id, name=name, token_hash=_sha256(token),
                           prefix=token[: len(TOKEN_PREFIX) + 6])
            session.add(row)
            session.commit()
            return token, self._token_view(row, user.username)

    @staticmethod
    def _token_view(row: ApiToken, username: str) -> TokenView:
        return TokenView(row.id, row.user_id, username, row.name, row.prefix, row.created_at,
                         row.last_used_at, row.revoked_at)

    def list_tokens(self, user_id: int | None = None) -> list[TokenView]:
        with self._sessions() as session:
            query = select(ApiToken, User.username).join(User, User.id == ApiToken.user_id)
            if user_id is not None:
                query = query.where(ApiToken.user_id == user_id)
            rows = session.execute(query.order_by(ApiToken.created_at.desc()))
            return [self._token_view(token, username) for token, username in rows]

    def revoke_token(self, token_id: int, *, user_id: int | None = None) -> None:
        """Revoke a token (only the user's own unless ``user_id`` is None: an admin)."""
        with self._sessions() as session:
            row = session.get(ApiToken, token_id)
            if row is None or (user_id is not None and row.user_id != user_id):
                raise AccountError(f"no API token with id {token_id}", 404)
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                session.commit()

    def user_for_token(self, token: str) -> UserView | None:
        """The active user a bearer token acts for, or None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200 or "\x00" in token:
            return None
        with self._sessions() as session:
            row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _sha256(token)))
            if row is None or row.revoked_at is not None:
                return None
            user = session.get(User, row.user_id)
            if user is None or not user.active:
                return None
            now = utcnow()
            if row.last_used_at is None or (now - row.last_used_at) > timedelta(
                    minutes=1):
                row.last_used_at = now
                session.commit()
            return UserView.of(user)
