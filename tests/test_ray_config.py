"""The Ray pieces that need no running cluster: config files, the app builder, affinity keys, forwarding."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

pytest.importorskip("ray", reason="needs adapterhub[ray]")

from ray.serve.schema import ServeDeploySchema  # noqa: E402

from adapterhub.cli.main import cli  # noqa: E402
from adapterhub.server.ray.affinity import AffinityKeys, json_fields  # noqa: E402
from adapterhub.server.ray.app import Scaling, build_app  # noqa: E402
from adapterhub.server.ray.settings import ReplicaSettings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _validated(config: dict) -> ServeDeploySchema:
    """Ray's own schema of `serve deploy` files, then our builder on every application's args."""
    schema = ServeDeploySchema.model_validate(config)
    for app in config["applications"]:
        assert app["import_path"] == "adapterhub.server.ray.app:build_app"
        build_app(app["args"])
    return schema


def test_write_ray_config_is_a_serve_deploy_file_for_the_same_options(tmp_path):
    out = tmp_path / "serve.yaml"
    result = CliRunner().invoke(cli, [
        "serve", "--registry", str(tmp_path / "reg"), "--replicas", "3", "--min-replicas", "1", "--max-replicas",
        "6", "--target-ongoing-requests", "12", "--max-loaded-adapters", "8", "--quantize", "int8",
        "--num-cpus-per-replica", "2", "--api-key", "sekret", "--write-ray-config", str(out)])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(out.read_text())
    _validated(config)
    app = config["applications"][0]
    args = app["args"]
    assert args["registry"] == str(tmp_path / "reg") and args["max_loaded_adapters"] == 8
    assert args["quantize"] == "int8" and len(args["api_key_digests"]) == 1
    assert "sekret" not in out.read_text()  # keys travel as digests
    engine = app["deployments"][0]
    assert engine["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 6, "initial_replicas": 3,
                                            "target_ongoing_requests": 12.0}
    assert engine["ray_actor_options"]["num_cpus"] == 2.0


def test_the_shipped_serve_config_and_rayservice_manifest_validate():
    _validated(yaml.safe_load((ROOT / "deploy" / "serve_config.yaml").read_text()))
    service = yaml.safe_load((ROOT / "deploy" / "kuberay-rayservice.yaml").read_text())
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    _validated(yaml.safe_load(service["spec"]["serveConfigV2"]))
    # What the RayService CRD (ray.io/v1) requires of the cluster: a head group and named worker
    # groups, each a pod template whose containers have a name and an image.
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert all(g["groupName"] for g in cluster["workerGroupSpecs"])
    for group in groups:
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c["name"] and c["image"] for c in containers)
    worker = cluster["workerGroupSpecs"][0]
    assert worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]


@pytest.mark.parametrize("args, message", [
    (["--replicas", "2", "--min-replicas", "3", "--max-replicas", "2"], "min_replicas"),
    (["--replicas", "2", "--with-hub"], "--with-hub"),
    (["--replicas", "2", "--lora-modules", "no-equals-sign"], "--lora-modules"),
])
def test_bad_fleet_options_are_one_line_usage_errors(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["serve", "--registry", str(tmp_path), *args,
                                      "--write-ray-config", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.yaml").exists()


def test_fleet_lora_modules_are_pushed_and_pinned_once_at_launch(tmp_path, make_lora, tiny_base):
    """Every replica must serve one version under a --lora-modules name: the folder is pushed (and
    checked against the base) by the command, the config carries NAME=name@N, a restart pushes nothing."""
    from adapterhub.registry import LocalRegistry

    folder, out = make_lora(seed=3), tmp_path / "serve.yaml"
    hub = LocalRegistry(tmp_path / "reg")
    hub.push(make_lora(seed=4), name="tone", task="t", base=str(tiny_base), tags=["prod"])
    args = ["serve", "--registry", str(tmp_path / "reg"), "--base", str(tiny_base), "--replicas", "2",
            "--lora-modules", f"sql={folder}", "--lora-modules", "friendly=tone:prod", "--write-ray-config", str(out)]
    for _ in range(2):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    config = yaml.safe_load(out.read_text())
    _validated(config)
    assert config["applications"][0]["args"]["lora_modules"] == ["sql=sql@1", "friendly=tone@1"]
    assert [v.ref for v in hub.list(name="sql")] == ["sql@1"]  # pushed once, not per launch
    settings = ReplicaSettings.from_args(config["applications"][0]["args"])
    assert settings.served_names() == {"sql": "sql@1", "friendly": "tone@1"}

    unknown = CliRunner().invoke(cli, [*args[:-4], "--lora-modules", "x=nope", "--write-ray-config", str(out) + "2"])
    assert unknown.exit_code == 1 and "nope" in unknown.output and "Traceback" not in unknown.output
    assert not Path(str(out) + "2").exists()
    taken = CliRunner().invoke(cli, ["serve", "--registry", str(tmp_path / "reg"), "--base", "smol", "--replicas", "2",
                                     "--lora-modules", "smol=tone:prod", "--write-ray-config", str(out) + "3"])
    assert taken.exit_code == 1 and "base model's name" in taken.output and not Path(str(out) + "3").exists()


def test_builder_args_come_typed_or_as_serve_run_strings(tmp_path):
    typed = ReplicaSettings.from_args({"registry": str(tmp_path), "max_batch_size": 8, "preload": ["a", "b"]})
    strings = ReplicaSettings.from_args({"registry": str(tmp_path), "max_batch_size": "8", "preload": "a,b"})
    assert typed == strings and typed.engine.preload == ("a", "b")
    with pytest.raises(ValueError, match="unknown adapterhub args: bogus"):
        build_app({"registry": str(tmp_path), "bogus": 1})
    with pytest.raises(ValueError, match="args.max_batch_size"):
        build_app({"registry": str(tmp_path), "max_batch_size": "many"})
    with pytest.raises(ValueError, match="registry is required"):
        build_app({})


def test_replica_keys_follow_the_single_servers_rule(tmp_path, monkeypatch):
    """Carried digests replace the environment's keys (a flag replaces its variable); without them
    the environment's apply; metrics behind a key without any key is refused."""
    from adapterhub.server.http.api_keys import ServingKeys

    monkeypatch.setenv("ADAPTERHUB_API_KEY", "from-env")
    carried = ReplicaSettings.resolved(str(tmp_path), api_key_digests=(ServingKeys.of(["flag"]).api[0].hex(),))
    keys = carried.serving_keys()
    assert keys.accepts("Bearer flag") and not keys.accepts("Bearer from-env")
    assert ReplicaSettings.resolved(str(tmp_path)).serving_keys().accepts("Bearer from-env")
    monkeypatch.delenv("ADAPTERHUB_API_KEY")
    with pytest.raises(ValueError, match="metrics_need_key"):
        ReplicaSettings.resolved(str(tmp_path), metrics_need_key=True).serving_keys()


def test_scaling_is_a_count_or_autoscaling_bounds():
    assert Scaling(num_replicas=3).deployment_options() == {"num_replicas": 3}
    assert Scaling(num_replicas=2, max_replicas=5).deployment_options() == {
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 5, "initial_replicas": 2}}
    assert Scaling(num_replicas=9, min_replicas=0, max_replicas=4).deployment_options()["autoscaling_config"][
        "initial_replicas"] == 4
    with pytest.raises(ValueError):
        Scaling(num_replicas=0)


def test_every_reference_to_one_version_shares_one_affinity_key(tmp_path, make_lora, tiny_base):
    from adapterhub.registry import LocalRegistry

    hub = LocalRegistry(tmp_path / "registry")
    first = hub.push(make_lora(seed=1), name="tone", task="t", base=str(tiny_base), tags=["prod"])
    keys = AffinityKeys(hub, ttl_s=0)
    key = f"tone@sha256:{first.digest}"
    assert {keys.for_model(r) for r in ("tone", "tone:prod", "tone@1", key)} == {key}
    assert keys.for_fields(json_fields(b'{"model": "tone:prod", "prompt": "x"}')) == key
    assert keys.for_fields(json_fields(b'{"adapter": "tone"}')) == key  # /v1/adapters/load's field
    second = hub.push(make_lora(seed=2), name="tone", task="t", base=str(tiny_base))
    hub.tag("tone@2", "prod")
    assert keys.for_model("tone:prod") == f"tone@sha256:{second.digest}"  # a moved tag moves the traffic
    assert hub.resolve(keys.for_model("tone:prod")).version == 2
    for unknown in (b'{"model": "nope"}', b'{"model": "../x"}', b"not json", b"[1]", b'{"model": 3}'):
        assert keys.for_fields(json_fields(unknown)) == ""
    aliased = AffinityKeys(hub, aliases={"friendly": "tone@1"}, ttl_s=0)  # --lora-modules friendly=tone@1
    assert aliased.for_model("friendly") == key and aliased.for_model("tone:prod") == f"tone@sha256:{second.digest}"


def test_forwarding_runs_the_flask_app_and_reports_a_departed_client():
    from flask import Flask, Response, request

    from adapterhub.server.ray.forwarding import ForwardedRequest, call_app

    app = Flask("t")
    seen = {}

    @app.post("/echo")
    def echo():
        seen["gone"] = request.environ["waitress.client_disconnected"]()
        seen["auth"] = request.headers.get("Authorization")
        seen["q"] = request.args["q"]

        def parts():
            yield b"a"
            yield b"b"
        return Response(parts(), status=201, headers={"X-Test": "1"})

    forwarded = ForwardedRequest.of("POST", "/echo", "q=1", [("Authorization", "Bearer k"), ("Host", "h"),
                                                             ("Content-Length", "999")], b"body")
    assert ("Host", "h") not in forwarded.headers and ("Content-Length", "999") not in forwarded.headers
    head, body = call_app(app, forwarded, lambda: True)
    assert head.status == 201 and ("X-Test", "1") in head.headers
    assert b"".join(body) == b"ab" and seen == {"gone": True, "auth": "Bearer k", "q": "1"}
