"""Secrets are never printed, whatever characters they hold; the command API's token is required."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
import yarl
from hypothesis import given
from hypothesis import strategies as st

from lamassu_aws_connector.config import ConfigError, Settings, load_settings, mask_url

from .test_cli import cli

# Passwords an operator really types: letters, digits and the characters that break URL parsing.
PASSWORDS = st.text(
    alphabet=st.one_of(st.sampled_from("#/?@:%&=+ ;[]!~'\""), st.characters(codec="utf-8", exclude_categories=("Cs",))),
    min_size=1,
    max_size=30,
).map(lambda tail: "Pw9" + tail)  # a prefix no other part of the URL contains, so "not in" is meaningful


@given(PASSWORDS)
def test_a_password_never_survives_masking_whatever_it_holds(password: str) -> None:
    url = f"amqp://svc-user:{password}@rabbit.example:5671/prod?heartbeat=30"
    settings = Settings(amqp={"url": url})
    shown = [mask_url(url), mask_url(settings.amqp.url), str(settings.masked()), settings.model_dump_json()]
    for text in shown[:3]:
        assert password not in text and quote(password, safe="") not in text
        assert "Pw9" not in text
    assert "rabbit.example:5671/prod" in shown[1]
    if "%" not in password:  # then the encoded URL means exactly the password typed
        assert yarl.URL(settings.amqp.url).password == password
        assert yarl.URL(settings.amqp.url).host == "rabbit.example"


def test_check_config_masks_passwords_holding_url_delimiters(tmp_path: Path) -> None:
    password = "Pw9#with/slash?and@at"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"amqp": {"url": f"amqp://svc:{password}@127.0.0.1:5672/"}}))
    result = cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "Pw9" not in result.stdout + result.stderr
    assert yaml.safe_load(result.stdout)["amqp"]["url"] == "amqp://svc:***@127.0.0.1:5672/"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"amqp": {"url": f"amqpx://svc:{password}@127.0.0.1:5672/"}}))
    rejected = cli("check-config", "--config", str(bad))
    assert rejected.returncode != 0 and "Pw9" not in rejected.stdout + rejected.stderr


def test_the_command_api_needs_a_token_beyond_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="auth_token"):
        load_settings_from(tmp_path, {"http": {"commands": True}})
    assert load_settings_from(tmp_path, {"http": {"commands": True, "host": "127.0.0.1"}}).http.commands
    token_file = tmp_path / "token"
    token_file.write_text("a-long-enough-secret-token\n")
    settings = load_settings_from(tmp_path, {"http": {"commands": True, "auth_token_file": str(token_file)}})
    assert settings.http.auth_token is not None
    assert settings.http.auth_token.get_secret_value() == "a-long-enough-secret-token"
    assert "a-long-enough-secret-token" not in str(settings.masked())
    with pytest.raises(ConfigError, match="at least 16"):
        load_settings_from(tmp_path, {"http": {"auth_token": "short"}})


def load_settings_from(tmp_path: Path, data: dict[str, object]) -> Settings:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_settings(path)


@pytest.mark.parametrize("token", [12345678901234567890123, ["Tk9-secret-in-a-list"], {"v": "Tk9-secret-in-a-map"}])
def test_a_token_of_the_wrong_type_is_refused_without_being_shown(tmp_path: Path, token: object) -> None:
    for section in ({"http": {"auth_token": token}}, {"actions": {"lamassu_ca": {"bearer_token": token}}}):
        with pytest.raises(ConfigError) as refused:
            load_settings_from(tmp_path, section)
        message = str(refused.value)
        assert "token" in message
        assert "12345678901234567890123" not in message and "Tk9" not in message


def test_the_config_cache_is_served_by_the_command_api_and_needs_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings_from(tmp_path, {"actions": {"config_cache": True}})
    assert "http.commands" in str(refused.value)
    api = {"commands": True, "host": "127.0.0.1"}
    settings = load_settings_from(tmp_path, {"http": api, "actions": {"config_cache": True}})
    assert settings.actions.config_cache and settings.actions.config_cache_seconds == 300
    assert not settings.actions.enabled  # no call to Lamassu: the cache only keeps what AWS answered


def test_with_the_command_api_on_held_replies_reappear_within_a_callers_wait(tmp_path: Path) -> None:
    """A reply held by a replica that dies must come back before the callers on the others give up."""
    assert load_settings_from(tmp_path, {}).sqs.visibility_timeout == 60
    api = {"commands": True, "host": "127.0.0.1"}
    settings = load_settings_from(tmp_path, {"http": api})
    assert settings.sqs.visibility_timeout == 20 < settings.http.commands_timeout_seconds
    slow = load_settings_from(tmp_path, {"http": {**api, "commands_timeout_seconds": 9}})
    assert slow.sqs.visibility_timeout == 6
    chosen = load_settings_from(tmp_path, {"http": api, "sqs": {"visibility_timeout": 45}})
    assert chosen.sqs.visibility_timeout == 45  # an operator's choice stands, with a start-up warning
    assert chosen.visibility_advice() is not None and settings.visibility_advice() is None
    assert load_settings_from(tmp_path, {"sqs": {"visibility_timeout": 45}}).visibility_advice() is None
