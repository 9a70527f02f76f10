"""apps.protos: the chat gRPC interface, its committed stubs, and a plain gRPC round trip.

No Ray here: a bare ``grpc.server`` proves the generated stubs work end to end.
"""

import difflib
import re
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from apps.protos import chat_pb2, chat_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "notebooks" / "apps" / "protos"
GENERATED = ["chat_pb2.py", "chat_pb2.pyi", "chat_pb2_grpc.py"]
# The command in chat.proto's header, run from the repository root.
PROTOC = [
    sys.executable, "-m", "grpc_tools.protoc", "-I", "notebooks",
    "--python_out={out}", "--pyi_out={out}", "--grpc_python_out={out}",
    "notebooks/apps/protos/chat.proto",
]


def test_stubs_import_and_describe_the_service():
    service = chat_pb2.DESCRIPTOR.services_by_name["ChatService"]
    chat = service.methods_by_name["Chat"]
    assert service.full_name == "serve_chat.ChatService"
    assert chat.input_type.full_name == "serve_chat.ChatRequest"
    assert chat.output_type.full_name == "serve_chat.ChatReply"
    # Serve's gRPC proxy calls the ingress deployment's method named like the RPC: "Chat".
    assert callable(chat_pb2_grpc.add_ChatServiceServicer_to_server)
    assert chat_pb2.DESCRIPTOR.name == "apps/protos/chat.proto"


def test_messages_round_trip():
    request = chat_pb2.ChatRequest(prompt="What does the Serve controller do?", max_new_tokens=32)
    assert chat_pb2.ChatRequest.FromString(request.SerializeToString()) == request
    reply = chat_pb2.ChatReply(answer="It manages deployments.", model="tiny-chat")
    parsed = chat_pb2.ChatReply()
    parsed.ParseFromString(reply.SerializeToString())
    assert (parsed.answer, parsed.model) == ("It manages deployments.", "tiny-chat")
    assert chat_pb2.ChatRequest(prompt="hi").max_new_tokens == 0  # 0: the server's default


def _normalised(text: str) -> list[str]:
    """Generated code without the lines that only carry the generator's versions."""
    text = re.sub(r"^# Protobuf Python Version: .*\n", "", text, flags=re.M)
    text = re.sub(r"(ValidateProtobufRuntimeVersion)\(.*?\)", r"\1(...)", text, flags=re.S)
    text = re.sub(r"^GRPC_GENERATED_VERSION = .*$", "GRPC_GENERATED_VERSION = ...", text, flags=re.M)
    return text.splitlines(keepends=True)


def test_committed_stubs_match_the_proto(tmp_path):
    command = [part.format(out=tmp_path) for part in PROTOC]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in GENERATED:
        committed = (PROTOS / name).read_text(encoding="utf-8")
        fresh = (tmp_path / "apps" / "protos" / name).read_text(encoding="utf-8")
        diff = "".join(
            difflib.unified_diff(
                _normalised(committed), _normalised(fresh), f"committed/{name}", f"fresh/{name}"
            )
        )
        assert not diff, f"{name} is out of date; regenerate it (see chat.proto):\n{diff}"


class EchoChat(chat_pb2_grpc.ChatServiceServicer):
    """A trivial ChatService: answers with the prompt, names the application it was sent to."""

    def Chat(self, request, context):
        metadata = dict(context.invocation_metadata())
        tokens = request.max_new_tokens or 96
        return chat_pb2.ChatReply(
            answer=f"{request.prompt[:tokens]}",
            model=f"echo@{metadata.get('application', '?')}",
        )


@pytest.fixture
def chat_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    chat_pb2_grpc.add_ChatServiceServicer_to_server(EchoChat(), server)
    port = server.add_insecure_port("127.0.0.1:0")  # a free port chosen by the OS
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_grpc_round_trip_without_ray(chat_server):
    with grpc.insecure_channel(chat_server) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        reply = stub.Chat(
            chat_pb2.ChatRequest(prompt="hello serve", max_new_tokens=5),
            metadata=(("application", "chat"),),  # how a Serve client names the application
            timeout=10,
        )
        assert (reply.answer, reply.model) == ("hello", "echo@chat")
        default = stub.Chat(chat_pb2.ChatRequest(prompt="hi"), timeout=10)
        assert (default.answer, default.model) == ("hi", "echo@?")


def test_unimplemented_rpc_is_reported_as_such():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    chat_pb2_grpc.add_ChatServiceServicer_to_server(chat_pb2_grpc.ChatServiceServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as err:
                stub = chat_pb2_grpc.ChatServiceStub(channel)
                stub.Chat(chat_pb2.ChatRequest(prompt="x"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=None)
