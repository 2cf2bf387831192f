"""Signing in to the status page: server-side sessions (one random id per login) and short login codes.

A session is what a browser's cookie names: a random id made at login, kept here (only its SHA-256, with its
expiry and its CSRF token) in `<data_dir>/sessions.json` (0600), so a restart keeps people signed in. Logout
forgets it; it expires after `auth.session_days`; a changed admin token ends every session (the file records a
keyed digest of the token it was made under, never the token).

A login code is for a phone: `telemetry-hub login-code` (over SSH) or the start-up log gives a short code that
the sign-in form takes instead of the 48-hex admin token, once, within `auth.login_code_seconds`. Codes live in
memory only: a restart logs a new one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .secrets import write_private

__all__ = ["CODE_ALPHABET", "LoginCodes", "Session", "SessionBook", "normalise_code"]

log = logging.getLogger(__name__)

_TOKEN_LABEL = b"telemetry-hub sessions v1"
_MAX_SESSIONS = 200  # the oldest go first beyond this: a flood of logins cannot grow the file for ever
# No 0/o, 1/l/i: a code read off a terminal and typed on a phone has no look-alikes.
CODE_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
_CODE_LENGTH = 10  # 31**10 = 8e14 codes: guessing one within its few minutes is hopeless
_MAX_CODES = 10  # codes waiting to be used at once; minting more drops the oldest


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    """One signed-in browser: the digest of its cookie's id, when it ends, and its CSRF token for forms."""

    id_hash: str
    created_at: float
    expires_at: float
    csrf: str


class SessionBook:
    """The sessions of this hub, kept in a private file so a restart keeps them."""

    def __init__(
        self, path: Path | None, admin_token: str, days: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.lifetime_s = days * 86400
        self._clock = clock
        self._mark = hmac.new(admin_token.encode(), _TOKEN_LABEL, hashlib.sha256).hexdigest()
        self._sessions: dict[str, Session] = {}
        self._load()

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            doc = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("cannot read the sessions file %s (%s): everyone signs in again", self.path, exc)
            return
        if not isinstance(doc, dict) or not hmac.compare_digest(str(doc.get("token_mark", "")), self._mark):
            log.info("the admin token changed since the last run: every browser signs in again")
            self._save()
            return
        now = self._clock()
        for item in doc.get("sessions", []):
            try:
                s = Session(
                    str(item["id_hash"]), float(item["created_at"]), float(item["expires_at"]), str(item["csrf"])
                )
            except (KeyError, TypeError, ValueError):
                continue
            if s.expires_at > now:
                self._sessions[s.id_hash] = s

    def _save(self) -> None:
        if self.path is None:
            return
        doc = {
            "token_mark": self._mark,
            "sessions": [s.__dict__ for s in sorted(self._sessions.values(), key=lambda s: s.created_at)],
        }
        try:
            write_private(self.path, json.dumps(doc, indent=1).encode())
        except OSError as exc:
            log.warning("cannot write the sessions file %s (%s): sign-ins last until the hub restarts", self.path, exc)

    def create(self) -> tuple[str, Session]:
        """A new session: the cookie value (only the browser keeps it) and the session it names."""
        sid = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(_digest(sid), now, now + self.lifetime_s, secrets.token_urlsafe(24))
        self._drop_expired(now)
        while len(self._sessions) >= _MAX_SESSIONS:
            oldest = min(self._sessions.values(), key=lambda s: s.created_at)
            del self._sessions[oldest.id_hash]
        self._sessions[session.id_hash] = session
        self._save()
        return sid, session

    def find(self, sid: str) -> Session | None:
        """The live session a cookie names, or None (unknown, logged out, expired).

        The cookie's digest is compared with each session's by hmac.compare_digest, all of them: how long the
        check takes says nothing about how close a guess was."""
        if not sid:
            return None
        presented = _digest(sid)
        found = None
        for s in list(self._sessions.values()):
            if hmac.compare_digest(s.id_hash, presented):
                found = s
        if found is None:
            return None
        if found.expires_at <= self._clock():
            self.revoke(sid)
            return None
        return found

    def revoke(self, sid: str) -> bool:
        """Forget the session a cookie names (logout); whether there was one."""
        gone = self._sessions.pop(_digest(sid), None) is not None if sid else False
        if gone:
            self._save()
        return gone

    def end_all(self) -> int:
        """Forget every session (the admin token changed); how many there were."""
        n = len(self._sessions)
        self._sessions.clear()
        self._save()
        return n

    def __len__(self) -> int:
        return len(self._sessions)

    def _drop_expired(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]


def normalise_code(text: str) -> str:
    """A typed login code as stored: lower case, without the spaces and dashes people add."""
    return "".join(c for c in text.lower() if c not in " -\t")


class LoginCodes:
    """Short, one-use, time-limited codes that the sign-in form takes instead of the admin token."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.time) -> None:
        self.seconds = seconds
        self._clock = clock
        self._codes: dict[str, float] = {}  # code -> expires at

    def mint(self) -> tuple[str, float]:
        """A new code (shown grouped, "abcde-fghjk") and when it stops working."""
        now = self._clock()
        self._codes = {c: t for c, t in self._codes.items() if t > now}
        while len(self._codes) >= _MAX_CODES:
            del self._codes[min(self._codes, key=self._codes.__getitem__)]
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(_CODE_LENGTH))
        expires = now + self.seconds
        self._codes[code] = expires
        return f"{code[:5]}-{code[5:]}", expires

    def use(self, typed: str) -> bool:
        """Whether `typed` is a live code; a code that works is used up."""
        presented = normalise_code(typed)
        if len(presented) != _CODE_LENGTH:
            return False
        now = self._clock()
        match = None
        for code, expires in list(self._codes.items()):
            if hmac.compare_digest(code.encode(), presented.encode()) and expires > now:
                match = code
        if match is None:
            return False
        del self._codes[match]
        return True
