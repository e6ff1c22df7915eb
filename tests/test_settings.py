"""Settings: file + environment, validated with messages that name the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.settings import ConfigError, Secret, load_settings, settings_from_dict


def test_defaults_without_file_or_env() -> None:
    s = load_settings(None, env={})
    assert s.server.route == "/api/fal/proxy"
    assert s.upstream.queue == "https://queue.fal.run"
    assert not s.fal.configured


def test_file_then_env_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nroute = "/fal"\n[upstream]\nconnect_timeout = 2\n')
    env = {
        "FAL_KEY": "k-123456789",
        "FLUX_PROXY_UPSTREAM_QUEUE": "http://127.0.0.1:9/queue.fal.run/",
        "FLUX_PROXY__UPSTREAM__FIRST_BYTE_TIMEOUT": "7.5",
        "FLUX_PROXY__LOG__ACCESS": "false",
    }
    s = load_settings(cfg, env=env)
    assert s.server.route == "/fal"
    assert s.upstream.connect_timeout == 2.0
    assert s.upstream.first_byte_timeout == 7.5
    assert s.upstream.queue == "http://127.0.0.1:9/queue.fal.run"  # trailing slash dropped
    assert s.log.access is False
    assert s.fal.authorization() == "Key k-123456789"
    assert "k-123456789" not in repr(s)


def test_config_path_from_env(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nport = 9999\n')
    assert load_settings(None, env={"FLUX_PROXY_CONFIG": str(cfg)}).server.port == 9999


def test_key_id_and_secret() -> None:
    s = settings_from_dict({"fal": {"key_id": "id", "key_secret": "sec"}})
    assert s.fal.authorization() == "Key id:sec"
    with pytest.raises(ConfigError, match=r"fal\.key_secret"):
        settings_from_dict({"fal": {"key_id": "id"}})


@pytest.mark.parametrize(
    ("data", "key", "problem"),
    [
        ({"server": {"rout": "/x"}}, "server.rout", "unknown setting"),
        ({"nope": {}}, "nope", "unknown setting"),
        ({"server": {"port": "80"}}, "server.port", "must be an integer"),
        ({"server": {"port": 70000}}, "server.port", "between 0 and 65535"),
        ({"server": {"route": "api"}}, "server.route", "must start with '/'"),
        ({"upstream": {"queue": "http://example.com"}}, "upstream.queue", "loopback"),
        ({"upstream": {"queue": "ftp://x"}}, "upstream.queue", "http(s) URL"),
        ({"upstream": {"run": "https://u:p@fal.run"}}, "upstream.run", "credentials"),
        ({"upstream": {"connect_timeout": 0}}, "upstream.connect_timeout", "positive"),
        ({"upstream": {"forward_headers": ["Authorization"]}}, "upstream.forward_headers",
         "may never be forwarded"),
        ({"upstream": {"forward_headers": ["cookie"]}}, "upstream.forward_headers", "never"),
        ({"log": {"level": "loud"}}, "log.level", "must be one of"),
        ({"log": {"access": "yes"}}, "log.access", "true or false"),
        ({"fal": {"key": "a b"}}, "fal.key", "whitespace"),
    ],
)
def test_bad_config_names_key_and_problem(data: dict, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data)
    assert info.value.key == key
    assert problem in str(info.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, env={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", env={})


def test_secret_masking() -> None:
    assert repr(Secret("supersecretkey")) == "Secret('***')"
    s = settings_from_dict({"fal": {"key": "supersecretkey"}})
    assert s.public_dict()["fal"]["key"] == "***ey"


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, env=env,
        timeout=60,
    )


def test_check_config_prints_masked_settings(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "FAL_KEY": "sk-live-abcdef123456"}
    done = _cli("check-config", env=env)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["fal"]["key"] == "***56"
    assert "sk-live-abcdef123456" not in done.stdout + done.stderr


def test_check_config_reports_bad_key_without_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[upstream]\nconnect_timeout = -1\n")
    done = _cli("check-config", "--config", str(cfg), env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "upstream.connect_timeout" in done.stderr and "positive" in done.stderr
    assert "Traceback" not in done.stderr
