"""Secrets: the admin token's one precedence, private writes, and key files re-read when they change."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import hub.secrets
from hub.config import Config, from_dict
from hub.errors import ConfigError
from hub.secrets import ADMIN_TOKEN_ENV, KeyFile, admin_token, write_private


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


def config(tmp_path: Path, token_file: Path | None = None) -> Config:
    auth = {"admin_token_file": str(token_file)} if token_file else {}
    return from_dict({"server": {"data_dir": str(tmp_path / "data")}, "auth": auth})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_given_token_wins_over_everything(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "from-env")
    assert admin_token(config(tmp_path, token_file), "  given  ") == "given"
    assert admin_token(config(tmp_path, token_file), "given", create=True) == "given"


def test_token_file_wins_over_the_environment(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("  from-file\n")
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "from-env")
    assert admin_token(config(tmp_path, token_file)) == "from-file"
    assert admin_token(config(tmp_path, token_file), None, create=True) == "from-file"
    assert admin_token(config(tmp_path, token_file), "") == "from-file"


def test_missing_token_file_is_an_error_for_the_hub_and_empty_for_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "from-env")
    cfg = config(tmp_path, tmp_path / "absent")
    with pytest.raises(ConfigError, match="absent"):
        admin_token(cfg, create=True)
    assert admin_token(cfg) == ""  # the named file is used even when unreadable; the variable is not consulted


def test_environment_wins_over_the_data_dir_file(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    cfg.data_dir.mkdir(parents=True)
    (cfg.data_dir / "admin-token").write_text("from-data-dir\n")
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "  from-env ")
    assert admin_token(cfg) == "from-env"
    assert admin_token(cfg, create=True) == "from-env"


def test_blank_environment_variable_is_ignored(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    cfg.data_dir.mkdir(parents=True)
    (cfg.data_dir / "admin-token").write_text("from-data-dir\n")
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "   ")
    assert admin_token(cfg) == "from-data-dir"


def test_data_dir_token_is_created_0600_once_when_asked(tmp_path):
    cfg = config(tmp_path)
    cfg.data_dir.mkdir(parents=True)
    path = cfg.data_dir / "admin-token"
    made = admin_token(cfg, create=True)
    assert len(made) == 48 and int(made, 16) >= 0  # 24 random bytes in hex: never starts with "-"
    assert path.read_text() == made + "\n"
    assert mode(path) == 0o600
    assert admin_token(cfg, create=True) == made
    assert admin_token(cfg) == made


def test_data_dir_token_is_not_created_without_create(tmp_path):
    cfg = config(tmp_path)
    cfg.data_dir.mkdir(parents=True)
    assert admin_token(cfg) == ""
    assert not (cfg.data_dir / "admin-token").exists()


def test_empty_data_dir_token_file_is_replaced_when_creating(tmp_path):
    cfg = config(tmp_path)
    cfg.data_dir.mkdir(parents=True)
    (cfg.data_dir / "admin-token").write_text("\n")
    made = admin_token(cfg, create=True)
    assert made and (cfg.data_dir / "admin-token").read_text().strip() == made


def test_write_private_creates_0600_and_leaves_no_tmp(tmp_path):
    path = tmp_path / "secret"
    write_private(path, b"hush\n")
    assert path.read_bytes() == b"hush\n"
    assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_write_private_replaces_a_readable_file_with_a_private_one(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert path.read_bytes() == b"new"
    assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_write_private_removes_its_tmp_file_when_it_fails(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hub.secrets.os, "replace", refuse)
    path = tmp_path / "secret"
    with pytest.raises(OSError):
        write_private(path, b"x")
    assert list(tmp_path.iterdir()) == []


def test_key_file_reads_and_rereads_a_changed_file(tmp_path):
    path = tmp_path / "key"
    path.write_text("first-key\n")
    key = KeyFile(str(path), "UNUSED_ENV")
    assert key.value() == "first-key"
    assert key.problem is None
    first_stamp = key.stamp
    path.write_text("second-key-longer\n")
    os.utime(path, (1_000_000_000, 1_000_000_000))
    assert key.value() == "second-key-longer"
    assert key.stamp != first_stamp


def test_key_file_is_not_reread_while_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "key"
    path.write_text("k\n")
    key = KeyFile(str(path), "UNUSED_ENV")
    assert key.value() == "k"
    reads = []
    real_read_text = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **kw: reads.append(self) or real_read_text(self, *a, **kw))
    assert key.value() == "k"
    assert reads == []


def test_empty_key_file_means_no_key(tmp_path):
    path = tmp_path / "key"
    path.write_text("\n")
    assert KeyFile(str(path), "UNUSED_ENV").value() is None


def test_unreadable_key_file_is_reported_and_recovers(tmp_path):
    path = tmp_path / "key"
    key = KeyFile(str(path), "UNUSED_ENV")
    assert key.value() is None
    assert key.problem is not None
    assert str(path) in key.problem
    assert "upstream.api_key_file" in key.problem
    assert key.stamp is None
    path.write_text("now-here\n")
    assert key.value() == "now-here"
    assert key.problem is None


def test_key_file_that_is_a_directory_is_reported(tmp_path):
    key = KeyFile(str(tmp_path), "UNUSED_ENV")
    assert key.value() is None
    assert key.problem is not None and str(tmp_path) in key.problem


def test_key_file_that_disappears_forgets_the_old_key(tmp_path):
    path = tmp_path / "key"
    path.write_text("k\n")
    key = KeyFile(str(path), "UNUSED_ENV")
    assert key.value() == "k"
    path.unlink()
    assert key.value() is None
    assert key.problem is not None


def test_key_without_a_file_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TEST_HUB_KEY", "env-key")
    key = KeyFile("", "TEST_HUB_KEY")
    assert key.path() is None
    assert key.value() == "env-key"
    monkeypatch.setenv("TEST_HUB_KEY", "")
    assert key.value() is None


def test_relative_key_file_is_found_in_the_credentials_directory(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "upstream-key").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.chdir(tmp_path)
    key = KeyFile("upstream-key", "UNUSED_ENV")
    assert key.path() == creds / "upstream-key"
    assert key.value() == "from-systemd"
