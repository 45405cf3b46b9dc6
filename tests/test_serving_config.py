"""The serving settings are written once, in ``adapterhub.serving_config``: the CLI's options are its
fields, no other module restates a default, and a bad value is one line naming the field."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import click
import pytest

from adapterhub.serving_config import EngineConfig, HttpConfig, RequestLimits, ServingConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = (EngineConfig, RequestLimits, HttpConfig)
# What the library's and the server's own parameters call some settings.
ALIASES = {"max_adapter_memory": "max_adapter_bytes", "max_rank": "max_lora_rank", "http_threads": "threads",
           "max_waiting_requests": "max_waiting_http_requests", "max_waiting": "max_waiting_http_requests",
           "max_queued": "max_queued_requests", "max_loaded": "max_loaded_adapters", "max_bytes": "max_adapter_bytes"}


def _defaults() -> dict[str, object]:
    return {f.name: f.default for c in CONFIGS for f in dataclasses.fields(c) if f.default is not dataclasses.MISSING}


def test_serve_options_are_the_config_fields_with_their_defaults():
    from adapterhub.cli.serve_cmd import serve

    defaults = _defaults()
    params = {p.name: p for p in serve.params if p.name in defaults}
    assert set(params) == set(defaults), "every setting is an option of adapterhub serve"
    for name, param in params.items():
        default = param.default if param.default in (None, ()) else param.type.convert(param.default, param, None)
        assert default == defaults[name], name
        field = next(f for c in CONFIGS for f in dataclasses.fields(c) if f.name == name)
        assert param.help == field.metadata["help"], name


def _value(node: ast.AST | None) -> object:
    """What a literal default is (a constant, or arithmetic of constants such as ``1 << 30``), else ``None``."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp) and _value(node.left) is not None and _value(node.right) is not None:
        return eval(compile(ast.Expression(node), "<default>", "eval"), {"__builtins__": {}})
    return None


def _restated(tree: ast.AST, defaults: dict[str, object]) -> list[tuple[int, str]]:
    """Parameters, class fields and click options named after a setting (or an alias of one) whose
    default is a literal of the setting's default value: the default written a second time."""

    def same(name: str, node: ast.AST | None) -> bool:
        setting = ALIASES.get(name, name)
        value = _value(node)
        return setting in defaults and value is not None and not isinstance(value, bool) \
            and value == defaults[setting]

    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            found += [(a.lineno, a.arg) for a, d in pairs if same(a.arg, d)]
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) \
                        and same(stmt.target.id, stmt.value):
                    found.append((stmt.lineno, stmt.target.id))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "option":
            flags = [a.value.lstrip("-").replace("-", "_") for a in node.args if isinstance(a, ast.Constant)]
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            found += [(node.lineno, f) for f in flags if same(f, default)]
    return found


def test_no_other_module_restates_a_serving_default():
    own = ROOT / "hub" / "serving_config.py"
    restated = [f"{path.relative_to(ROOT)}:{line} {name}"
                for folder in ("hub", "cli", "server") for path in sorted((ROOT / folder).rglob("*.py"))
                if path != own for line, name in _restated(ast.parse(path.read_text()), _defaults())]
    assert restated == []


def test_the_checker_finds_a_restated_default():
    code = ("def start(max_lora_rank: int = 64, *, max_bytes=1 << 30, port: int = 0): ...\n"
            "class S:\n    max_batch_size: int = 16\n"
            "o = click.option('--threads', default=64)\n")
    found = {n for _, n in _restated(ast.parse(code), _defaults())}
    assert found == {"max_batch_size", "max_lora_rank", "max_bytes", "threads"}  # port 0 is another default


@pytest.mark.parametrize("make, message", [
    (lambda: EngineConfig(max_lora_rank=0), "max_lora_rank must be at least 1"),
    (lambda: EngineConfig(max_batch_size=2000), "max_batch_size must be at most 1024"),
    (lambda: EngineConfig(quantize="fp3"), "unknown quantize mode 'fp3' (choose from auto, bf16, int8, nf4, none)"),
    (lambda: RequestLimits(max_prompt_tokens=0), "max_prompt_tokens must be at least 1"),
    (lambda: HttpConfig(send_timeout_s=0.0), "send_timeout_s must be at least 0.1"),
    (lambda: HttpConfig(port=70000), "port must be at most 65535"),
    (lambda: EngineConfig(max_batch_size="8"), "max_batch_size must be a number, got '8'"),
])
def test_a_bad_setting_is_one_line_naming_its_field(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert str(e.value) == message


def test_configs_are_frozen_values_and_keys_stay_out_of_repr():
    config = ServingConfig(http=HttpConfig(api_keys=["sekret"]))
    assert config.http.api_keys == ("sekret",) and "sekret" not in repr(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.engine.max_lora_rank = 8  # type: ignore[misc]
    assert config.engine.replace(max_lora_rank=8).max_lora_rank == 8
    with pytest.raises(TypeError):
        config.engine.replace(max_rank=8)
    assert HttpConfig(with_hub=True).max_request_body_size > HttpConfig().max_request_body_size


def test_serve_refuses_an_out_of_range_option_as_click_does(tmp_path):
    from adapterhub.cli.main import cli
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["serve", "--registry", str(tmp_path), "--max-lora-rank", "0"])
    assert result.exit_code == 2
    assert "Invalid value for '--max-lora-rank': 0 is not in the range 1<=x<=1024." in result.output
    assert isinstance(next(p for p in __import__("adapterhub.cli.serve_cmd", fromlist=["serve"]).serve.params
                           if p.name == "max_lora_rank").type, click.IntRange)
