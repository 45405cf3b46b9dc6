"""``adapterhub serve`` as a user runs it: a real process, the default tiny base and quantization, a real client."""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import pytest
from click.testing import CliRunner

from adapterhub.cli.main import cli
from conftest import save_lora, save_prompt_tuning
from adapterhub.location import open_registry
from serving_helpers import start_serve_process


def _start(args, env):
    proc, url, _ = start_serve_process(args, env)
    return proc, url


def _get(url):
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def test_serve_without_base_builds_the_tiny_base_and_serves_bf16_on_cpu(tiny_base, tmp_path, _private_registry):
    from openai import OpenAI

    registry = open_registry(str(_private_registry))
    registry.push(save_lora(tiny_base, tmp_path / "l"), name="tenant-a", task="t", base=str(tiny_base))
    registry.push(save_prompt_tuning(tiny_base, tmp_path / "p"), name="tenant-b", task="t", base=str(tiny_base))
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc, url = _start(["--preload", "tenant-a", "--max-batch-size", "4"], env)
    try:
        health = _get(url + "/health")
        assert health["quantization"] == "bf16"  # --quantize auto on a CPU
        assert health["base"] == str(tmp_path / "cache" / "adapterhub" / "tiny-llama")
        assert [a["ref"] for a in health["loaded_adapters"]] == ["tenant-a@1"]
        client = OpenAI(base_url=url + "/v1", api_key="unused")
        for model in ("tenant-a", "tenant-b", health["base"]):
            done = client.completions.create(model=model, prompt="hi", max_tokens=4, temperature=0)
            assert done.usage.prompt_tokens == 2 and done.choices[0].finish_reason in ("stop", "length")
        assert {m.id for m in client.models.list().data} >= {"tenant-a", "tenant-b"}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0


@pytest.mark.parametrize("args, message", [
    (["--quantize", "fp3"], "Invalid value for '--quantize'"),
    (["--max-adapter-memory", "lots"], "is not a byte size"),
    (["--port", "-1"], "Invalid value for '--port'"),
])
def test_serve_refuses_bad_options(args, message):
    result = CliRunner().invoke(cli, ["serve", *args])
    assert result.exit_code == 2 and message in result.output


def test_serve_refuses_an_unknown_preload_in_one_line(tiny_base):
    result = CliRunner().invoke(cli, ["serve", "--base", str(tiny_base), "--quantize", "none",
                                      "--preload", "nobody", "--port", "0"])
    assert result.exit_code == 1
    assert "nobody" in result.output and "Traceback" not in result.output


def test_serve_refuses_a_missing_base_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["serve", "--base", str(tmp_path / "nowhere"), "--quantize", "none"])
    assert result.exit_code == 1 and "nowhere" in result.output and "Traceback" not in result.output
