"""`adapterhub login` / `logout` against a real hub on loopback: the token is checked, stored per hub
URL in a 0600 file, used by later commands after --token and $ADAPTERHUB_TOKEN, and never printed."""

from __future__ import annotations

import json
import stat
import threading

import pytest
from click.testing import CliRunner

from adapterhub.cli.main import cli
from adapterhub.credentials import credentials_path, hub_key, store_token, stored_token
from conftest import snapshot


@pytest.fixture(autouse=True)
def config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("ADAPTERHUB_TOKEN", raising=False)
    return tmp_path / "config"


def invoke(*args: str, input: str | None = None, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), input=input, env=env)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_login_stores_the_token_privately_and_commands_use_it(hub, make_lora, config_home):
    result = invoke("login", "--registry", hub.url + "/", "--token", hub.write_token)
    assert result.exit_code == 0, result.output
    assert "write scope" in result.output and hub.write_token not in result.output
    path = config_home / "adapterhub" / "credentials.json"
    assert path == credentials_path() and mode(path) == 0o600 and mode(path.parent) == 0o700
    assert json.loads(path.read_text())["hubs"] == {hub_key(hub.url): {"token": hub.write_token}}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind

    pushed = invoke("push", str(make_lora()), "--name", "sent", "--task", "t", "--registry", hub.url, "--json")
    assert pushed.exit_code == 0, pushed.output  # a write with no --token: the stored one went along
    assert hub.registry.resolve("sent").version == 1

    # $ADAPTERHUB_TOKEN beats the stored token, and --token beats both.
    refused = invoke("tag", "sent@1", "prod", "--registry", hub.url, env={"ADAPTERHUB_TOKEN": hub.read_token})
    assert refused.exit_code != 0 and "read scope" in refused.output
    done = invoke("tag", "sent@1", "prod", "--registry", hub.url, "--token", hub.write_token,
                  env={"ADAPTERHUB_TOKEN": hub.read_token})
    assert done.exit_code == 0, done.output

    assert invoke("logout", "--registry", hub.url).exit_code == 0
    assert stored_token(hub.url) is None and mode(path) == 0o600
    again = invoke("untag", "sent:prod", "--registry", hub.url)
    assert again.exit_code != 0 and "needs a token" in again.output
    assert "no token stored" in invoke("logout", "--registry", hub.url).output


def test_login_prompts_without_echo(hub):
    result = invoke("login", "--registry", hub.url, input=hub.read_token + "\n")
    assert result.exit_code == 0, result.output
    assert "Token for" in result.output and hub.read_token not in result.output
    assert "read scope" in result.output and stored_token(hub.url) == hub.read_token


@pytest.mark.parametrize("token, says", [
    ("adh_" + "x" * 40, "not valid on this hub"),
    ("two words", "printable ASCII"),
    ("caf\u00e9", "printable ASCII"),
])
def test_a_bad_token_is_refused_and_nothing_is_stored(hub, config_home, token, says):
    before = snapshot(hub.registry.root)
    result = invoke("login", "--registry", hub.url, "--token", token)
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
    assert says in result.output and token not in result.output
    assert not credentials_path().exists()
    assert snapshot(hub.registry.root) == before


def test_login_needs_a_hub_url(tmp_path):
    for args in (["--registry", str(tmp_path / "folder")], []):  # [] : $ADAPTERHUB_REGISTRY, a folder here
        result = invoke("login", *args, "--token", "t")
        assert result.exit_code != 0 and "keeps a token for a hub URL" in result.output
    unreachable = invoke("login", "--registry", "http://127.0.0.1:9", "--token", "t")
    assert unreachable.exit_code != 0 and "cannot reach" in unreachable.output
    assert not credentials_path().exists()


def test_tokens_are_kept_per_hub_url_and_concurrent_logins_all_land(hub):
    urls = [f"http://127.0.0.1:{port}" for port in range(20000, 20016)]
    threads = [threading.Thread(target=store_token, args=(url, f"token-{i}")) for i, url in enumerate(urls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [stored_token(url) for url in urls] == [f"token-{i}" for i in range(len(urls))]
    assert invoke("login", "--registry", hub.url, "--token", hub.write_token).exit_code == 0
    assert invoke("logout", "--registry", hub.url).exit_code == 0
    assert stored_token(urls[0]) == "token-0" and stored_token(hub.url) is None
    assert stored_token("HTTP://127.0.0.1:20003/") == "token-3"


def test_a_damaged_credentials_file_is_one_line(hub):
    credentials_path().parent.mkdir(parents=True)
    credentials_path().write_text("{not json")
    result = invoke("list", "--registry", hub.url)
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1
    assert "credentials.json cannot be read" in result.output
