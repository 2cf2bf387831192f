"""The sign-in rules, pure: sessions (random, server-side, expiring, ended by a new token) and login codes
(short, one use, time-limited), on a clock the test moves."""

from __future__ import annotations

from pathlib import Path

from hub.signin import CODE_ALPHABET, LoginCodes, SessionBook, normalise_code


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_are_random_revocable_expiring_and_bound_to_the_token(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "sessions.json"
    book = SessionBook(path, "token-1", 1.0, clock=clock)
    a, sa = book.create()
    b, _ = book.create()
    assert a != b and len(a) >= 40
    assert book.find(a) == sa and book.find(b) is not None and book.find("nope") is None
    assert book.revoke(a) and book.find(a) is None and not book.revoke(a)
    # Kept across a restart under the same token; ended by another token.
    assert SessionBook(path, "token-1", 1.0, clock=clock).find(b) is not None
    assert SessionBook(path, "token-2", 1.0, clock=clock).find(b) is None
    assert SessionBook(path, "token-1", 1.0, clock=clock).find(b) is None  # the new token's book replaced it
    # Expiry after session_days.
    book = SessionBook(path, "token-1", 1.0, clock=clock)
    c, _ = book.create()
    clock.now += 86400 - 1
    assert book.find(c) is not None
    clock.now += 2
    assert book.find(c) is None
    assert a not in path.read_text() and c not in path.read_text()


def test_login_codes_are_short_used_once_and_expire() -> None:
    clock = Clock()
    codes = LoginCodes(60, clock=clock)
    code, expires = codes.mint()
    assert expires == clock.now + 60
    assert len(normalise_code(code)) == 10 and set(normalise_code(code)) <= set(CODE_ALPHABET)
    assert not set("0o1li") & set(CODE_ALPHABET)
    assert not codes.use("abcde-fghjk")
    assert codes.use(f"  {code.upper()} ") and not codes.use(code)  # once
    late, _ = codes.mint()
    clock.now += 61
    assert not codes.use(late)
