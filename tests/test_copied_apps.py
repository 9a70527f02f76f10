"""Every app still works when a reader copies it out of the repository.

For each application, the test copies its module, plus the sibling modules it imports (and
nothing else), into an empty folder of its own; gRPC stubs are generated there from the
``.proto``, as in a project of one's own. The folder also gets a ``helpers`` package
that refuses to import, so an app that still needed the notebooks' helper package would fail
here. Then ``serve run`` deploys them all from one config file, each application with its own
folder as its ``working_dir``, and each answers a real request.

This runs its own Ray (``serve run`` starts one), so it runs before the tests that share the
session's Ray (see ``conftest.py``).
"""

import ast
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

import helpers
from found_apps import modules_with_app

# Starts Ray, a model server or a browser: not part of `make check` (see tests/conftest.py).
pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "notebooks" / "apps"
SERVE = str(Path(sys.executable).with_name("serve"))
PORT = 8000

# application -> (module:attribute, a request that must succeed: method, path, JSON body); one
# application per module (embed_service.unbatched and perf.sleepy_app need the same files as
# the ones named here). Every other module of notebooks/apps that defines `app` is added below
# with GET /openapi.json (its FastAPI ingress answers it once the replica is up).
APPLICATIONS = {
    "llm": ("llm:app", "POST", "/", {"prompt": "What is Ray Serve?"}),
    "prod": ("llm_prod:app", "POST", "/", {"prompt": "What is Ray Serve?"}),
    "chatbot": ("chatbot:app", "POST", "/generate", {"message": "What is Ray Serve?"}),
    "openai": ("openai_api:app", "POST", "/v1/chat/completions",
               {"model": "tiny-chat", "messages": [{"role": "user", "content": "What is Ray Serve?"}]}),
    "rag": ("rag:app", "POST", "/ask", {"question": "How do I give each replica a GPU?"}),
    "batched": ("embed_service:batched", "POST", "/", {"text": "hello"}),
    "memo": ("memo:bounded", "POST", "/", {"prompt": "hello"}),
    "hello": ("perf:hello_app", "GET", "/", None),
    "slow": ("slow:app", "GET", "/?seconds=0", None),
    "whoami": ("whoami:app", "GET", "/", None),
    "endpoints": ("chat_endpoints:app", "POST", "/chat", {"prompt": "What is Ray Serve?"}),
}
for _module in modules_with_app():
    if f"{_module}:app" not in {target for target, *_ in APPLICATIONS.values()}:
        APPLICATIONS[_module] = (f"{_module}:app", "GET", "/openapi.json", None)
POISON = 'raise ImportError("an app imported helpers: apps must not need the notebooks\' helper package")\n'


def sibling_files(module: str) -> set[Path]:
    """The files ``module`` needs from notebooks/apps: itself and what it imports, transitively."""
    needed: set[Path] = set()
    todo = [APPS / f"{module}.py"]
    while todo:
        path = todo.pop()
        if path in needed:
            continue
        needed.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                todo.append(APPS / (node.module.replace(".", "/") + ".py"))
    return needed


def test_apps_are_found_not_listed():
    found = modules_with_app()
    assert {"llm", "chatbot", "chat_endpoints", "whoami"} <= set(found)
    assert "chat_core" not in found and "validation" not in found  # no `app` there
    assert {f"{m}:app" for m in found} <= {target for target, *_ in APPLICATIONS.values()}


def test_sibling_files_follow_imports():
    names = {p.relative_to(APPS).as_posix() for p in sibling_files("chatbot")}
    assert names == {"chatbot.py", "llm.py", "chat_core.py", "accelerator.py", "validation.py", "protos/chat_pb2.py"}
    assert {p.name for p in sibling_files("slow")} == {"slow.py"}


@pytest.fixture(scope="module")
def copied(tmp_path_factory):
    """One folder per application with only what it imports; a config file deploying them all."""
    base = tmp_path_factory.mktemp("copied")
    applications = []
    for name, (import_path, *_) in APPLICATIONS.items():
        folder = base / name
        for source in sibling_files(import_path.split(":")[0]):
            target = folder / source.relative_to(APPS)
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.name == "chat_pb2.py":
                # Generated code names the module it was generated for (apps.protos.chat_pb2):
                # in a project of your own, generate it from the .proto for your layout.
                shutil.copy(source.with_name("chat.proto"), target.with_name("chat.proto"))
                protoc = [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", "--python_out=.", "protos/chat.proto"]
                subprocess.run(protoc, cwd=folder, check=True, capture_output=True, timeout=120)
            else:
                shutil.copy(source, target)
        (folder / "helpers").mkdir()
        (folder / "helpers" / "__init__.py").write_text(POISON)
        # The chat model on one replica where an app asks for two: what is tested is the copy,
        # and a config file may override any deployment option (as a reader's would).
        scaled = [{"name": "Generator", "num_replicas": 1}] if name in ("chatbot", "rag", "openai") else []
        applications.append(
            {
                "name": name,
                **({"deployments": scaled} if scaled else {}),
                "route_prefix": f"/{name}",
                "import_path": import_path,
                "runtime_env": {
                    # a folder on this machine (a config file takes URIs: local:// is "as it is here")
                    "working_dir": f"local://{folder}",
                    # where the repository keeps them; a reader points these at their own
                    "env_vars": {
                        "SERVE_CHAT_MODEL": str(ROOT / "assets" / "tiny-chat"),
                        "SERVE_QA_CORPUS": str(ROOT / "assets" / "serve_qa.jsonl"),
                    },
                },
            }
        )
    config = {"http_options": {"host": "127.0.0.1", "port": PORT}, "applications": applications}
    (base / "serve.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return base


@pytest.fixture(scope="module")
def running(copied):
    # `serve run` starts a Ray of its own here: let it count more CPUs than the machine has,
    # so that every application's replicas fit at once (Ray only counts, it does not pin).
    proc = helpers.start_background(
        # --address local: a Ray of its own, never the cluster a stale /tmp/ray/ray_current_cluster names
        [SERVE, "run", "--address", "local", "serve.yaml"], copied / "serve_run.log", cwd=copied,
        # unbuffered: the log shows what serve run did, even if it has to be killed
        env={"RAY_OVERRIDE_RESOURCES": '{"CPU": 32}', "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{PORT}"

    def all_routes() -> bool:
        if proc.poll() is not None:
            log = (copied / "serve_run.log").read_text(errors="replace")
            pytest.fail(f"serve run exited with {proc.returncode}:\n{log[-3000:]}")
        return requests.get(f"{base}/-/routes", timeout=2).json().keys() >= {f"/{n}" for n in APPLICATIONS}

    try:
        try:
            helpers.wait_until(all_routes, 240, "every copied application to be deployed", interval_s=1)
        except TimeoutError as exc:
            log = (copied / "serve_run.log").read_text(errors="replace")
            pytest.fail(f"{exc}\nthe end of serve run's log:\n{log[-3000:]}")
        yield base
    finally:
        # Ctrl-C: serve run deletes every application (each replica shuts down gracefully),
        # then stops its Ray; eleven applications on two busy cores can take a minute or more.
        start = time.monotonic()
        try:
            helpers.stop_process_tree(proc, signal.SIGINT, timeout_s=180)
        except TimeoutError as exc:
            log = (copied / "serve_run.log").read_text(errors="replace")
            pytest.fail(f"{exc}\nthe end of serve run's log:\n{log[-3000:]}")
        print(f"serve run stopped {time.monotonic() - start:.1f} s after Ctrl-C")


@pytest.mark.parametrize("name", APPLICATIONS)
def test_copied_app_answers(running, copied, name):
    _, method, path, body = APPLICATIONS[name]
    url = f"{running}/{name}{path}"

    def answered() -> bool:
        return requests.request(method, url, json=body, timeout=60).status_code == 200

    # the route exists as soon as the ingress is up; its model may still be loading
    helpers.wait_until(answered, 120, f"{method} /{name}{path} to answer 200", interval_s=1)
    log = (copied / "serve_run.log").read_text(errors="replace")
    assert "apps must not need the notebooks' helper package" not in log
