"""Secrets in one place: the admin token (one precedence for hub and CLI), key files, private writes.

The admin token is found in this order, by the hub and by every CLI command alike:
  1. `--token` on the command line (CLI only),
  2. the file named by `auth.admin_token_file`,
  3. the environment variable TELEMETRY_HUB_ADMIN_TOKEN,
  4. `<data_dir>/admin-token`, which the hub creates (mode 0600) on its first start.
So with a file and the variable both set, the CLI sends the token the hub checks.
"""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

from .config import Config
from .errors import ConfigError

__all__ = [
    "ADMIN_TOKEN_ENV",
    "KeyFile",
    "admin_token",
    "device_keys",
    "hub_id",
    "read_secret_file",
    "write_private",
]

ADMIN_TOKEN_ENV = "TELEMETRY_HUB_ADMIN_TOKEN"


def read_secret_file(path: Path) -> str:
    """Read a key file, stripped; the key itself is never logged."""
    try:
        return path.read_text("utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (the new name survives a power cut)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write a file only the service user can read (0600), atomically and durably (file and directory)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _stable_value(path: Path, make: str) -> str:
    """A value kept in the data dir, created once (mode 0600) when missing."""
    try:
        value = path.read_text("utf-8").strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    write_private(path, (make + "\n").encode())
    return make


def _read_quietly(path: Path) -> str:
    try:
        return path.read_text("utf-8").strip()
    except OSError:
        return ""


def hub_id(data_dir: Path, *, create: bool = True) -> str:
    """This hub's id (a uuid kept in <data_dir>/hub-id); "" if it has none and `create` is False."""
    path = data_dir / "hub-id"
    return _stable_value(path, str(uuid.uuid4())) if create else _read_quietly(path)


def admin_token(cfg: Config, given: str | None = None, *, create: bool = False) -> str:
    """The admin token by the one precedence above; the hub passes create=True to make step 4's file."""
    if given:
        return given.strip()
    if cfg.auth.admin_token_file:
        path = Path(cfg.auth.admin_token_file)
        return read_secret_file(path) if create else _read_quietly(path)
    env = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if env:
        return env
    path = cfg.data_dir / "admin-token"
    if create:
        # Hex: never starts with "-", so `--token VALUE` works on any command line.
        return _stable_value(path, secrets.token_hex(24))
    return _read_quietly(path)


def admin_token_source(cfg: Config) -> str:
    """Where the admin token comes from, in words (for error messages; never the token itself)."""
    if cfg.auth.admin_token_file:
        return f"the file {cfg.auth.admin_token_file} (auth.admin_token_file)"
    if os.environ.get(ADMIN_TOKEN_ENV, "").strip():
        return f"${ADMIN_TOKEN_ENV}"
    return str(cfg.data_dir / "admin-token")


def parse_device_keys(text: str) -> list[str]:
    """One key per line; blank lines and lines starting with '#' are not keys."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def device_keys(cfg: Config) -> list[str]:
    """The device keys, one per line of auth.device_keys_file ('#' starts a comment); none = no key needed."""
    name = cfg.auth.device_keys_file
    if not name:
        return []
    keys = parse_device_keys(read_secret_file(Path(name)))
    if not keys:
        raise ConfigError(f"auth.device_keys_file {name} holds no key; add one per line")
    return keys


class KeyFile:
    """A key re-read whenever its file changes, so a fixed key takes effect without a restart.

    A relative path is looked up in $CREDENTIALS_DIRECTORY first (systemd's LoadCredential=).
    Without a file, the key comes from the environment variable `env`.
    """

    def __init__(self, name: str, env: str) -> None:
        self.name = name
        self.env = env
        self.stamp: tuple[float, int] | None = None  # (mtime, size) of the file as last read
        self.problem: str | None = None  # why the file cannot be read now, in words
        self._key: str | None = None

    def path(self) -> Path | None:
        """The file the key is read from (None: the key comes from the environment)."""
        if not self.name:
            return None
        path = Path(self.name)
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if not path.is_absolute() and creds and (Path(creds) / path).exists():
            return Path(creds) / path
        return path

    def value(self) -> str | None:
        """The key now (None: no key), re-reading the file if it changed."""
        path = self.path()
        if path is None:
            return os.environ.get(self.env) or None
        try:
            st = path.stat()
            stamp = (st.st_mtime, st.st_size)
            if stamp != self.stamp:
                self._key = path.read_text("utf-8").strip() or None
                self.stamp = stamp
            self.problem = None
        except OSError as exc:
            self.problem = f"cannot read upstream.api_key_file {path}: {exc.strerror}"
            self._key, self.stamp = None, None
        return self._key
