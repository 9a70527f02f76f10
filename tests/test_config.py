"""helpers.config: Serve config files checked against Ray's schema, plus the keys it ignores.

Nothing here starts Ray or Serve: only Ray's pydantic models are used.
"""

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import ray
import yaml

import helpers
from helpers.config import check_serve_config, main, validate_serve_config

ROOT = Path(__file__).resolve().parents[1]
RAY = ray.__version__

# What `serve build apps.llm:app` writes for an app, with the options a reader would set.
VALID = yaml.safe_load(
    textwrap.dedent(
        """\
        proxy_location: EveryNode

        http_options:
          host: 127.0.0.1
          port: 8000

        grpc_options:
          port: 9000
          grpc_servicer_functions:
          - apps.protos.chat_pb2_grpc.add_ChatServiceServicer_to_server
          enable_reflection: true

        logging_config:
          encoding: TEXT
          log_level: INFO
          logs_dir: null
          enable_access_log: true
          additional_log_standard_attrs: []

        applications:
        - name: chat
          route_prefix: /
          import_path: apps.llm:app
          runtime_env:
            env_vars:
              SERVE_CHAT_MODEL: /models/tiny-chat
          deployments:
          - name: LLM
            num_replicas: 2
            max_ongoing_requests: 8
            user_config:
              temperature: 0.2
              anything_goes: {here: [1, 2]}
            ray_actor_options:
              num_cpus: 0.5
              resources:
                NPU: 1
        - name: scaled
          route_prefix: /scaled
          import_path: apps.llm:app
          deployments:
          - name: LLM
            max_ongoing_requests: 4
            autoscaling_config:
              min_replicas: 1
              max_replicas: 3
              target_ongoing_requests: 2.0
              policy:
                policy_function: my_autoscaling_module_that_is_not_imported:policy
        """
    )
)


def config(**changes):
    """A deep copy of VALID; changes["dep"] updates applications[0].deployments[0]."""
    cfg = copy.deepcopy(VALID)
    cfg["applications"][0]["deployments"][0].update(changes.pop("dep", {}))
    cfg.update(changes)
    return cfg


def test_valid_config_has_no_problems():
    assert validate_serve_config(VALID) == []
    check_serve_config(VALID)  # does not raise


def test_valid_yaml_file_has_no_problems(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(VALID))
    assert validate_serve_config(path) == []
    assert validate_serve_config(str(path)) == []


def test_max_concurrent_queries_points_to_max_ongoing_requests():
    problems = validate_serve_config(config(dep={"max_concurrent_queries": 5}))
    assert len(problems) == 1
    assert problems[0].startswith("applications[0].deployments[0].max_concurrent_queries: ")
    assert "silently ignored" in problems[0]
    assert "removed; use max_ongoing_requests" in problems[0]


def test_typo_is_an_unknown_key_with_its_location():
    problems = validate_serve_config(config(dep={"num_replica": 3}))
    assert problems == [
        "applications[0].deployments[0].num_replica: unknown key, silently ignored by "
        f"Ray Serve {RAY}; did you mean 'num_replicas'?"
    ]


def test_wrong_type_is_a_schema_problem():
    problems = validate_serve_config(config(dep={"num_replicas": "two"}))
    assert len(problems) == 1
    assert problems[0].startswith("applications[0].deployments[0]")
    assert "num_replicas" in problems[0] and "two" in problems[0]
    assert "unknown key" not in problems[0]


def test_schema_problem_location_leaves_out_union_member_names():
    problems = validate_serve_config(config(dep={"num_replicas": 0}))
    assert problems  # PositiveInt or "auto"
    assert all(p.startswith("applications[0].deployments[0].num_replicas: ") for p in problems)
    assert "greater than 0" in problems[0]


def test_missing_applications():
    problems = validate_serve_config({"http_options": {"port": 8000}})
    assert problems == ["applications: Field required"]


DEP = ("applications", 0, "deployments", 0)
SCALED = ("applications", 1, "deployments", 0, "autoscaling_config")


@pytest.mark.parametrize(
    ("where", "key", "hint"),
    [
        (DEP, "route_prefix", "route_prefix belongs to the application"),
        (DEP, "version", "Serve manages deployment versions"),
        (DEP, "num_cpus", "ray_actor_options"),
        (DEP, "max_replicas", "autoscaling_config"),
        ((*DEP, "ray_actor_options"), "max_concurrency", "max_ongoing_requests"),
        ((*DEP, "ray_actor_options"), "num_cpu", "did you mean 'num_cpus'"),
        (SCALED, "target_num_ongoing_requests_per_replica", "use target_ongoing_requests"),
        (("applications", 0), "num_replicas", "belongs in a deployment"),
        (("http_options",), "location", "proxy_location"),
        ((), "import_path", "single-application format"),
        ((), "port", "http_options"),
    ],
)
def test_unknown_keys_at_every_level_with_hints(where, key, hint):
    cfg = copy.deepcopy(VALID)
    node = cfg
    for part in where:
        node = node[part]
    node[key] = 1
    problems = validate_serve_config(cfg)
    assert len(problems) == 1, problems
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in (*where, key)).lstrip(".")
    assert problems[0].startswith(f"{loc}: unknown key, silently ignored")
    assert hint in problems[0]


def test_strict_models_reject_unknown_keys_reported_once_with_hint():
    cfg = copy.deepcopy(VALID)
    cfg["logging_config"]["level"] = "DEBUG"
    problems = validate_serve_config(cfg)
    assert problems == [
        f"logging_config.level: unknown key, rejected by Ray Serve {RAY}; use log_level"
    ]


def test_free_form_dicts_are_not_entered():
    cfg = config(dep={"user_config": {"num_replica": 1, "max_concurrent_queries": 2}})
    cfg["applications"][0]["runtime_env"]["whatever"] = {"x": 1}
    cfg["applications"][0]["args"] = {"model_path": "/m", "num_replica": 3}
    assert validate_serve_config(cfg) == []


def test_dict_or_model_fields_are_checked_like_the_deploy_does():
    cfg = copy.deepcopy(VALID)
    autoscaling = cfg["applications"][1]["deployments"][0]["autoscaling_config"]
    autoscaling["min_replicas"] = "abc"
    autoscaling["policy"]["bogus"] = 1
    problems = validate_serve_config(cfg)
    prefix = "applications[1].deployments[0].autoscaling_config"
    assert any(p.startswith(f"{prefix}.min_replicas: ") and "'abc'" in p for p in problems), problems
    assert any(p.startswith(f"{prefix}.policy.bogus: unknown key") for p in problems), problems


def test_route_prefix_checked_as_at_deploy_time():
    cfg = copy.deepcopy(VALID)
    cfg["applications"][1]["route_prefix"] = "scaled/"
    problems = validate_serve_config(cfg)
    assert problems == [
        "applications[1].route_prefix: 'scaled/' must start with '/' "
        "(Serve checks this only when it deploys the application)"
    ]


def test_host_in_application_is_a_schema_problem():
    cfg = copy.deepcopy(VALID)
    cfg["applications"][0]["host"] = "0.0.0.0"
    problems = validate_serve_config(cfg)
    assert len(problems) == 1 and problems[0].startswith("(top level): Host ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "(top level): expected a mapping with `applications:`, got an empty file"),
        ("- a\n- b\n", "(top level): expected a mapping with `applications:`, got a list"),
        ("applications: [\n", "(file): not valid YAML"),
    ],
)
def test_files_that_are_not_a_mapping(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    problems = validate_serve_config(path)
    assert len(problems) == 1 and problems[0].startswith(expected)


def test_check_raises_listing_every_problem():
    with pytest.raises(ValueError) as err:
        check_serve_config(config(dep={"num_replica": 3, "max_concurrent_queries": 5}))
    message = str(err.value)
    assert message.startswith("Serve config has 2 problems:")
    assert "num_replica:" in message and "max_concurrent_queries:" in message


def test_main_exit_codes(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(VALID))
    bad.write_text(yaml.safe_dump(config(dep={"max_concurrent_queries": 5})))
    assert main([str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok\n"
    assert main([str(good), str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{good}: ok"
    assert out[1].startswith(f"{bad}: applications[0].deployments[0].max_concurrent_queries: ")
    assert main([str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read the file" in capsys.readouterr().out


def test_cli_as_a_module(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(VALID))
    bad.write_text(yaml.safe_dump(config(dep={"num_replica": 2})))

    def run(*files):
        return subprocess.run(
            [sys.executable, "-m", "helpers.config", *map(str, files)],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )

    ok = run(good)
    assert (ok.returncode, ok.stdout) == (0, f"{good}: ok\n"), ok.stderr
    assert "RuntimeWarning" not in ok.stderr  # helpers does not import helpers.config eagerly
    failed = run(good, bad)
    assert failed.returncode == 1, failed.stderr
    assert f"{bad}: applications[0].deployments[0].num_replica: unknown key" in failed.stdout
    usage = run()
    assert usage.returncode == 2  # argparse: no FILE given
