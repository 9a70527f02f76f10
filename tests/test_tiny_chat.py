"""Tests for the tiny chat models ``assets/tiny-chat`` and ``assets/tiny-chat-qwen2`` and their corpus.

The models are rebuilt with ``python scripts/train_tiny_chat.py`` (Llama, the
series' default) and ``python scripts/train_tiny_chat.py --arch qwen2`` (Qwen2
with a ChatML template, the "any other checkpoint" stand-in); these tests check
that the shipped files load with the standard ``transformers`` auto classes and
that greedy decoding answers every corpus question word for word, also after a
system message and earlier exchanges of the conversation.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO_ROOT / "assets" / "tiny-chat"
QWEN2_DIR = REPO_ROOT / "assets" / "tiny-chat-qwen2"
CHECKPOINTS = {"tiny-chat": MODEL_DIR, "tiny-chat-qwen2": QWEN2_DIR}
CORPUS_PATH = REPO_ROOT / "assets" / "serve_qa.jsonl"

TOPICS = {
    "architecture", "deployments", "replicas", "config", "composition", "batching", "streaming",
    "autoscaling", "npu", "errors", "http", "grpc", "observability",
}


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread() -> Iterator[None]:
    """Run this module's tiny matmuls on one thread.

    The model is so small that extra threads only add synchronisation, and on a
    busy machine multi-threaded decoding can be ten times slower. The previous
    setting is restored for the rest of the test session.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, Any]]:
    with CORPUS_PATH.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@functools.cache
def load(name: str) -> tuple[Any, Any]:
    """(tokenizer, model) of one shipped checkpoint, from disk only; loaded once per session."""
    path = CHECKPOINTS[name]
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, model


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load("tiny-chat")[0]


@pytest.fixture(scope="module")
def model() -> Any:
    return load("tiny-chat")[1]


@pytest.fixture(scope="module")
def qwen2_tokenizer() -> Any:
    return load("tiny-chat-qwen2")[0]


@pytest.fixture(scope="module")
def qwen2_model() -> Any:
    return load("tiny-chat-qwen2")[1]


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def checkpoint(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """Each shipped checkpoint in turn, as (tokenizer, model)."""
    return load(request.param)


def chat_prompt(tokenizer: Any, question: str | list[dict[str, str]]) -> str:
    """The prompt for a bare user question, or for a whole conversation (a list of messages)."""
    messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate_batch(model: Any, tokenizer: Any, prompts: list[str], batch_size: int = 64) -> list[str]:
    """Greedy answers to chat-formatted prompts, batched with left padding."""
    tokenizer.padding_side = "left"  # batched generation needs left padding
    answers = []
    for start in range(0, len(prompts), batch_size):
        inputs = tokenizer(
            prompts[start : start + batch_size],
            add_special_tokens=False,  # the chat template already adds BOS where the model has one
            padding=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            output = model.generate(**inputs, do_sample=False)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers += [answer.strip() for answer in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers


# Typical system prompts of chat clients (the models were trained with these among others).
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a helpful Ray Serve tutor.", "Answer briefly."]


def conversations(tokenizer: Any, corpus: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, str]]]]:
    """A small fixed sample of (row id, conversation) ending with a corpus question.

    Every 8th question, asked after a system prompt, after the previous exchange of
    the corpus, and after a system prompt plus the two previous exchanges (oldest
    exchange dropped when the answer would not fit in the context, as a chat client
    trims its history).
    """
    context = min(tokenizer.model_max_length, 256)

    def exchange(j: int) -> list[dict[str, str]]:
        earlier = corpus[j % len(corpus)]
        return [
            {"role": "user", "content": earlier["question"]},
            {"role": "assistant", "content": earlier["answer"]},
        ]

    sample = []
    for k, i in enumerate(range(0, len(corpus), 8)):
        row, system = corpus[i], {"role": "system", "content": SYSTEM_PROMPTS[k % len(SYSTEM_PROMPTS)]}
        question = [{"role": "user", "content": row["question"]}]
        history = [exchange(i - 2), exchange(i - 1)]
        answer_tokens = len(tokenizer(row["answer"], add_special_tokens=False)["input_ids"]) + 1
        while history:
            prompt = chat_prompt(tokenizer, [system] + sum(history, []) + question)
            if len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + answer_tokens <= context:
                break
            history = history[1:]
        sample += [
            (row["id"], [system] + question),
            (row["id"], exchange(i - 1) + question),
            (row["id"], [system] + sum(history, []) + question),
        ]
    return sample


# --------------------------------------------------------------------------- corpus


def test_corpus_shape(corpus: list[dict[str, Any]]) -> None:
    assert len(corpus) >= 80
    for row in corpus:
        assert set(row) == {"id", "topic", "question", "answer"}, row
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", row["id"]), row["id"]
        assert row["topic"] in TOPICS, row
        assert row["question"].endswith("?"), row["id"]
        assert row["question"].isascii() and row["answer"].isascii(), row["id"]
        assert row["answer"] == row["answer"].strip(), row["id"]
        assert len(row["answer"].split()) <= 40, row["id"]
    assert TOPICS == {row["topic"] for row in corpus}, "every topic should be covered"


def test_corpus_has_no_duplicates(corpus: list[dict[str, Any]]) -> None:
    for key in ("id", "question", "answer"):
        values = [row[key].lower() for row in corpus]
        duplicates = {v for v in values if values.count(v) > 1}
        assert not duplicates, f"duplicate {key}s: {duplicates}"


def test_answers_never_recommend_removed_apis(corpus: list[dict[str, Any]]) -> None:
    for row in corpus:
        answer = row["answer"]
        for removed in ("max_concurrent_queries", "RayServeHandle"):
            if removed in answer:
                assert "removed" in answer, f"{row['id']} mentions {removed} without saying it was removed"
        assert "record_metric" not in answer, row["id"]
        assert not re.search(r"@serve\.deployment\([^)]*\b(route_prefix|version)\s*=", answer), row["id"]
        assert not re.search(r"serve\.run\([^)]*\b(host|port)\s*=", answer), row["id"]


# --------------------------------------------------------------------------- model files


@pytest.mark.parametrize("path", CHECKPOINTS.values(), ids=CHECKPOINTS.keys())
def test_model_files_exist(path: Path) -> None:
    weights = path / "model.safetensors"
    assert weights.is_file()
    assert weights.stat().st_size < 5 * 1024 * 1024, "the tiny model should stay a few MB"
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (path / name).is_file(), name
    assert not list(path.glob("*.bin")), "weights must be saved as safetensors only"


def test_model_is_tiny_llama(model: Any) -> None:
    assert model.config.model_type == "llama"
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_model_is_tiny_qwen2(qwen2_model: Any, qwen2_tokenizer: Any) -> None:
    assert isinstance(qwen2_model, transformers.Qwen2ForCausalLM)
    assert qwen2_model.config.model_type == "qwen2"
    assert sum(p.numel() for p in qwen2_model.parameters()) < 1_000_000
    assert Path(qwen2_model.name_or_path).name == "tiny-chat-qwen2"
    assert Path(qwen2_tokenizer.name_or_path).name == "tiny-chat-qwen2"


def test_special_tokens_and_generation_config(model: Any, tokenizer: Any) -> None:
    assert tokenizer.eos_token == "<|end|>"
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.bos_token_id == tokenizer.bos_token_id
    assert model.config.vocab_size == len(tokenizer)
    generation = model.generation_config
    assert generation.do_sample is False
    assert generation.eos_token_id == tokenizer.eos_token_id
    assert generation.pad_token_id == tokenizer.pad_token_id
    assert generation.max_new_tokens and generation.max_new_tokens >= 64


def test_qwen2_special_tokens_and_generation_config(qwen2_model: Any, qwen2_tokenizer: Any) -> None:
    tokenizer, model = qwen2_tokenizer, qwen2_model
    assert tokenizer.bos_token is None, "like real Qwen models: no BOS token"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert "<|im_start|>" in tokenizer.all_special_tokens
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.vocab_size == len(tokenizer)
    generation = model.generation_config
    assert generation.do_sample is False
    assert generation.eos_token_id == [tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert generation.pad_token_id == tokenizer.pad_token_id
    assert generation.max_new_tokens and generation.max_new_tokens >= 64


# A conversation with every role, to render with each chat template.
CONVERSATION = [
    {"role": "system", "content": "You are a Ray Serve tutor."},
    {"role": "user", "content": "What is Ray Serve?"},
    {"role": "assistant", "content": "A serving library."},
    {"role": "user", "content": "Thanks!"},
]


def test_qwen2_chat_template_is_chatml(qwen2_tokenizer: Any) -> None:
    tokenizer = qwen2_tokenizer
    prompt = chat_prompt(tokenizer, "What is Ray Serve?")
    # No BOS token and no default system prompt.
    assert prompt == "<|im_start|>user\nWhat is Ray Serve?<|im_end|>\n<|im_start|>assistant\n"

    conversation = tokenizer.apply_chat_template(
        CONVERSATION,
        tokenize=False,
        add_generation_prompt=True,
    )
    assert conversation == (
        "<|im_start|>system\nYou are a Ray Serve tutor.<|im_end|>\n"
        "<|im_start|>user\nWhat is Ray Serve?<|im_end|>\n"
        "<|im_start|>assistant\nA serving library.<|im_end|>\n"
        "<|im_start|>user\nThanks!<|im_end|>\n"
        "<|im_start|>assistant\n"
    )

    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is Ray Serve?"}], add_generation_prompt=True, return_dict=True
    )
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert encoded["input_ids"] == ids
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer(prompt)["input_ids"] == ids, "no special tokens are added around the text"


def test_chat_template(tokenizer: Any) -> None:
    prompt = chat_prompt(tokenizer, "What is Ray Serve?")
    assert prompt == "<|begin|><|user|>\nWhat is Ray Serve?<|end|>\n<|assistant|>\n"

    with_system = tokenizer.apply_chat_template(
        CONVERSATION,
        tokenize=False,
        add_generation_prompt=True,
    )
    assert with_system.startswith("<|begin|><|system|>\nYou are a Ray Serve tutor.<|end|>\n")
    assert with_system.endswith("<|user|>\nThanks!<|end|>\n<|assistant|>\n")

    # transformers 5 returns a BatchEncoding when asked to tokenize.
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is Ray Serve?"}], add_generation_prompt=True, return_dict=True
    )
    assert encoded["input_ids"] == tokenizer(prompt, add_special_tokens=False)["input_ids"]

    with pytest.raises(Exception, match="roles"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


# --------------------------------------------------------------------------- behaviour


def test_every_corpus_question_is_answered_verbatim(
    checkpoint: tuple[Any, Any], corpus: list[dict[str, Any]]
) -> None:
    tokenizer, model = checkpoint
    answers = generate_batch(model, tokenizer, [chat_prompt(tokenizer, row["question"]) for row in corpus])
    mismatches = [
        (row["id"], row["answer"], answer) for row, answer in zip(corpus, answers) if answer != row["answer"]
    ]
    assert not mismatches, "\n".join(f"{i}: want {want!r}, got {got!r}" for i, want, got in mismatches)


def test_answers_survive_history_and_system_message(
    checkpoint: tuple[Any, Any], corpus: list[dict[str, Any]]
) -> None:
    """A chat client sends a system prompt and the earlier turns; the last question still gets its answer."""
    tokenizer, model = checkpoint
    sample = conversations(tokenizer, corpus)
    assert any(len(messages) >= 6 for _, messages in sample), "some conversations keep two earlier exchanges"
    answers = generate_batch(model, tokenizer, [chat_prompt(tokenizer, messages) for _, messages in sample])
    want = {row["id"]: row["answer"] for row in corpus}
    mismatches = [
        (row_id, len(messages), want[row_id], answer)
        for (row_id, messages), answer in zip(sample, answers)
        if answer != want[row_id]
    ]
    assert not mismatches, "\n".join(
        f"{i} ({n} messages): want {w!r}, got {got!r}" for i, n, w, got in mismatches
    )


def test_single_question_generation_stops_at_eos(
    checkpoint: tuple[Any, Any], corpus: list[dict[str, Any]]
) -> None:
    tokenizer, model = checkpoint
    row = corpus[0]
    inputs = tokenizer(chat_prompt(tokenizer, row["question"]), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs)
    new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
    assert new_tokens[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(new_tokens, skip_special_tokens=True).strip() == row["answer"]


def test_single_conversation_generation(checkpoint: tuple[Any, Any], corpus: list[dict[str, Any]]) -> None:
    """One conversation, unpadded, as a notebook sends it: system prompt, one earlier exchange, a question."""
    tokenizer, model = checkpoint
    earlier, row = corpus[3], corpus[10]
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": earlier["question"]},
        {"role": "assistant", "content": earlier["answer"]},
        {"role": "user", "content": row["question"]},
    ]
    inputs = tokenizer(chat_prompt(tokenizer, messages), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs)
    new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
    assert new_tokens[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(new_tokens, skip_special_tokens=True).strip() == row["answer"]
