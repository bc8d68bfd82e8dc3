"""Settings: defaults, environment, overrides, and what never shows in a repr."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.errors import RtctsError
from serve_app.settings import ENV_VARS, Settings, SettingsError

SECRET = "sk_test_do-not-print-me-0123456789"


def test_defaults_from_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.policy_path == Path("policies/default.yaml")
    assert settings.ray_address is None
    assert settings.redis_url is None
    assert settings.stripe_api_key is None
    assert settings.stripe_api_base is None
    assert settings.http_host == "127.0.0.1"
    assert settings.http_port == 8000


def test_environment_is_read() -> None:
    settings = Settings.from_env(
        {
            "RTCTS_POLICY_PATH": "/etc/rtcts/policy.yaml",
            "RAY_ADDRESS": "ray://head:10001",
            "REDIS_URL": "redis://localhost:6380/0",
            "STRIPE_API_KEY": SECRET,
            "STRIPE_API_BASE": "http://127.0.0.1:12111",
            "RTCTS_HTTP_HOST": "0.0.0.0",
            "RTCTS_HTTP_PORT": "9000",
            "UNRELATED": "ignored",
        }
    )
    assert settings.policy_path == Path("/etc/rtcts/policy.yaml")
    assert settings.ray_address == "ray://head:10001"
    assert settings.redis_url == "redis://localhost:6380/0"
    assert settings.stripe_api_key == SECRET
    assert settings.stripe_api_base == "http://127.0.0.1:12111"
    assert settings.http_host == "0.0.0.0"
    assert settings.http_port == 9000


def test_each_setting_reads_only_its_documented_variable() -> None:
    assert set(ENV_VARS) == set(Settings.model_fields)
    for name, variable in ENV_VARS.items():
        assert variable in (Settings.model_fields[name].description or ""), name
    settings = Settings.from_env({"HTTP_PORT": "1234", "RTCTS_REDIS_URL": "redis://a"})
    assert settings.http_port == 8000
    assert settings.redis_url is None


def test_access_log_lines_are_off_unless_set() -> None:
    assert Settings.from_env({}).access_log is False
    assert Settings.from_env({"RTCTS_ACCESS_LOG": "1"}).access_log is True
    assert Settings.from_env({"RTCTS_ACCESS_LOG": "0"}).access_log is False
    with pytest.raises(SettingsError, match="access_log"):
        Settings.from_env({"RTCTS_ACCESS_LOG": "maybe"})


def test_empty_variable_counts_as_unset() -> None:
    settings = Settings.from_env({"RTCTS_HTTP_PORT": "", "REDIS_URL": ""})
    assert settings.http_port == 8000
    assert settings.redis_url is None


def test_overrides_win_over_environment_and_defaults() -> None:
    environ = {"RTCTS_HTTP_PORT": "9000", "RTCTS_POLICY_PATH": "env.yaml"}
    settings = Settings.from_env(environ, http_port=9100, policy_path="cli.yaml")
    assert settings.http_port == 9100
    assert settings.policy_path == Path("cli.yaml")
    assert settings.http_host == "127.0.0.1"  # neither given: the default


def test_none_override_means_not_given() -> None:
    settings = Settings.from_env({"RTCTS_POLICY_PATH": "env.yaml"}, policy_path=None)
    assert settings.policy_path == Path("env.yaml")
    assert Settings.from_env({}, policy_path=None).policy_path == Path("policies/default.yaml")


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTCTS_HTTP_PORT", "8123")
    monkeypatch.delenv("RTCTS_POLICY_PATH", raising=False)
    monkeypatch.delenv("POLICY_PATH", raising=False)
    settings = Settings.from_env()
    assert settings.http_port == 8123
    assert settings.policy_path == Path("policies/default.yaml")


@pytest.mark.parametrize("port", ["0", "65536", "-1", "http", "80.5"])
def test_invalid_port_from_environment(port: str) -> None:
    with pytest.raises(SettingsError, match=r"^invalid settings: http_port: ") as info:
        Settings.from_env({"RTCTS_HTTP_PORT": port})
    assert isinstance(info.value, RtctsError)
    assert "\n" not in str(info.value)


def test_invalid_override() -> None:
    with pytest.raises(SettingsError, match="http_port"):
        Settings.from_env({}, http_port=70000)


def test_unknown_override_is_refused() -> None:
    with pytest.raises(SettingsError, match="http_prot"):
        Settings.from_env({}, http_prot=8080)


def test_every_problem_is_in_the_message() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"RTCTS_HTTP_PORT": "0"}, http_host=["not", "a", "host"])
    message = str(info.value)
    assert "http_port:" in message
    assert "http_host:" in message


def test_repr_and_str_hide_the_stripe_key() -> None:
    settings = Settings.from_env({"STRIPE_API_KEY": SECRET, "RTCTS_HTTP_PORT": "9000"})
    assert settings.stripe_api_key == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert "http_port=9000" in repr(settings)


def test_settings_error_does_not_echo_values() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"STRIPE_API_KEY": SECRET, "RTCTS_HTTP_PORT": "not-a-port"})
    assert SECRET not in str(info.value)
    assert "not-a-port" not in str(info.value)


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(ValidationError, match="frozen"):
        settings.http_port = 1  # type: ignore[misc]


def test_every_setting_is_documented() -> None:
    for name, info in Settings.model_fields.items():
        assert info.description, name
        assert "(env " in info.description, name
