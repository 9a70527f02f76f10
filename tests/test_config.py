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
    assert problems == [
        "applications[0].deployments[0].max_concurrent_queries: unknown key, silently ignored by "
        f"Ray Serve {RAY}; removed; use max_ongoing_requests"
    ]


def test_notebook_03_outdated_config_prints_the_line_it_shows():
    """Notebook 03 (section "outdated") swaps max_ongoing_requests for max_concurrent_queries."""
    cfg = yaml.safe_load((ROOT / "notebooks" / "configs" / "llm.yaml").read_text())
    deployment = cfg["applications"][0]["deployments"][0]
    deployment.pop("max_ongoing_requests")
    deployment["max_concurrent_queries"] = 100
    assert validate_serve_config(cfg) == [
        "applications[0].deployments[0].max_concurrent_queries: unknown key, silently ignored by "
        "Ray Serve 2.60.0; removed; use max_ongoing_requests"
    ]


def test_typo_is_an_unknown_key_with_its_location():
    problems = validate_serve_config(config(dep={"num_replica": 3}))
    assert problems == [
        "applications[0].deployments[0].num_replica: unknown key, silently ignored by "
        f"Ray Serve {RAY}; did you mean 'num_replicas'?"
    ]


def test_wrong_type_is_a_schema_problem():
    problems = validate_serve_config(config(dep={"num_replicas": "two"}))
    assert problems == [
        'applications[0].deployments[0]: `num_replicas` must be an int or "auto", but got: two'
    ]


def test_schema_problem_location_leaves_out_union_member_names():
    problems = validate_serve_config(config(dep={"num_replicas": 0}))
    assert problems  # PositiveInt or "auto": pydantic names both members in its locations
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
        (DEP, "num_cpus", "it belongs in applications[i].deployments[i].ray_actor_options"),
        (DEP, "max_replicas", "it belongs in applications[i].deployments[i].autoscaling_config"),
        (DEP, "route_prefix", "it belongs in applications[i]"),
        (("applications", 0), "num_replicas", "it belongs in applications[i].deployments[i]"),
        ((), "import_path", "it belongs in applications[i]"),
        ((), "port", "it belongs in http_options or grpc_options"),  # not in an application
        ((*DEP, "ray_actor_options"), "num_cpu", "did you mean 'num_cpus'?"),
        (SCALED, "target_num_ongoing_requests_per_replica",
         "renamed to autoscaling_config.target_ongoing_requests"),
    ],
)
def test_unknown_keys_at_every_level_with_hints(where, key, hint):
    cfg = copy.deepcopy(VALID)
    node = cfg
    for part in where:
        node = node[part]
    node[key] = 1
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in (*where, key)).lstrip(".")
    assert validate_serve_config(cfg) == [
        f"{loc}: unknown key, silently ignored by Ray Serve {RAY}; {hint}"
    ]


def test_unknown_key_without_a_likely_fix_has_no_hint():
    problems = validate_serve_config(config(dep={"colour": "blue"}))
    assert problems == [
        f"applications[0].deployments[0].colour: unknown key, silently ignored by Ray Serve {RAY}"
    ]


def test_strict_models_reject_unknown_keys_reported_once_with_hint():
    cfg = copy.deepcopy(VALID)
    cfg["logging_config"]["level"] = "DEBUG"
    problems = validate_serve_config(cfg)
    assert problems == [
        f"logging_config.level: unknown key, rejected by Ray Serve {RAY}; did you mean 'log_level'?"
    ]


def test_free_form_dicts_are_not_entered():
    cfg = config(dep={"user_config": {"num_replica": 1, "max_concurrent_queries": 2}})
    cfg["applications"][0]["runtime_env"]["whatever"] = {"x": 1}
    cfg["applications"][0]["args"] = {"model_path": "/m", "num_replica": 3}
    cfg["applications"][0]["deployments"][0]["ray_actor_options"]["resources"]["num_replica"] = 1
    assert validate_serve_config(cfg) == []


def test_dict_or_model_fields_are_checked_like_the_deploy_does():
    cfg = copy.deepcopy(VALID)
    autoscaling = cfg["applications"][1]["deployments"][0]["autoscaling_config"]
    autoscaling["min_replicas"] = "abc"
    autoscaling["policy"]["bogus"] = 1
    prefix = "applications[1].deployments[0].autoscaling_config"
    assert validate_serve_config(cfg) == [
        f"{prefix}.policy.bogus: unknown key, silently ignored by Ray Serve {RAY}",
        f"{prefix}.min_replicas: Input should be a valid integer, unable to parse string as an "
        "integer",
    ]


def test_error_the_schema_also_reports_is_kept_once_at_its_precise_location():
    # DeploymentSchema builds gang_scheduling_config itself, and reports its errors at the
    # deployment; the "dict or model" check reports them at the field.
    problems = validate_serve_config(config(dep={"gang_scheduling_config": {"gang_size": "x"}}))
    assert problems == [
        "applications[0].deployments[0].gang_scheduling_config.gang_size: Input should be a valid "
        "integer, unable to parse string as an integer"
    ]


def test_import_paths_in_the_config_are_not_imported(tmp_path, monkeypatch):
    (tmp_path / "config_side_effect.py").write_text(
        "raise RuntimeError('helpers.config imported the application')\n"
        "def policy(ctx): ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config(dep={"request_router_config": {"request_router_class": "config_side_effect:policy"}})
    cfg["applications"][1]["deployments"][0]["autoscaling_config"]["policy"]["policy_function"] = (
        "config_side_effect:policy"
    )
    assert validate_serve_config(cfg) == []
    assert "config_side_effect" not in sys.modules


@pytest.mark.parametrize(
    ("prefix", "rules"),
    [
        ("scaled", ["must start with '/'"]),
        ("/scaled/", ["must not end with '/'"]),
        ("/scaled/{id}", ["must not contain '{' or '}'"]),
        ("scaled/", ["must start with '/'", "must not end with '/'"]),
    ],
)
def test_route_prefix_checked_as_at_deploy_time(prefix, rules):
    cfg = copy.deepcopy(VALID)
    cfg["applications"][1]["route_prefix"] = prefix
    assert validate_serve_config(cfg) == [
        f"applications[1].route_prefix: {prefix!r} {rule} (Serve checks this only when it deploys)"
        for rule in rules
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


def test_check_raises_listing_every_problem(tmp_path):
    cfg = config(dep={"num_replica": 3, "max_concurrent_queries": 5})
    with pytest.raises(ValueError) as err:
        check_serve_config(cfg)
    assert str(err.value).splitlines() == [
        "Serve config has 2 problem(s):",
        *(f"  - {p}" for p in validate_serve_config(cfg)),
    ]
    assert "num_replica:" in str(err.value) and "max_concurrent_queries:" in str(err.value)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=r"^Serve config '.*serve\.yaml' has 2 problem\(s\):"):
        check_serve_config(path)


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
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "missing.yaml")])
    assert exit_.value.code == 2  # argparse's usage error
    assert "cannot read " in capsys.readouterr().err


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
