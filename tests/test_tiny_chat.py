"""Tests for the tiny chat model in ``assets/tiny-chat`` and its corpus.

The model is rebuilt with ``python scripts/train_tiny_chat.py``; these tests
check that the shipped files load with the standard ``transformers`` auto
classes and that greedy decoding still answers every corpus question word for
word.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO_ROOT / "assets" / "tiny-chat"
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


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return transformers.AutoTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def model() -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval()


def chat_prompt(tokenizer: Any, question: str) -> str:
    """The bare-user-question prompt the model was trained on."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


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


def test_model_files_exist() -> None:
    weights = MODEL_DIR / "model.safetensors"
    assert weights.is_file()
    assert weights.stat().st_size < 5 * 1024 * 1024, "the tiny model should stay a few MB"
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (MODEL_DIR / name).is_file(), name
    assert not list(MODEL_DIR.glob("*.bin")), "weights must be saved as safetensors only"


def test_model_is_tiny_llama(model: Any) -> None:
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


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


def test_chat_template(tokenizer: Any) -> None:
    prompt = chat_prompt(tokenizer, "What is Ray Serve?")
    assert prompt == "<|begin|><|user|>\nWhat is Ray Serve?<|end|>\n<|assistant|>\n"

    with_system = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "You are a Ray Serve tutor."},
            {"role": "user", "content": "What is Ray Serve?"},
            {"role": "assistant", "content": "A serving library."},
            {"role": "user", "content": "Thanks!"},
        ],
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
    model: Any, tokenizer: Any, corpus: list[dict[str, Any]]
) -> None:
    tokenizer.padding_side = "left"  # batched generation needs left padding
    mismatches = []
    for start in range(0, len(corpus), 64):
        rows = corpus[start : start + 64]
        inputs = tokenizer(
            [chat_prompt(tokenizer, row["question"]) for row in rows],
            add_special_tokens=False,  # the chat template already starts with BOS
            padding=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            output = model.generate(**inputs, do_sample=False)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        mismatches += [
            (row["id"], row["answer"], answer.strip())
            for row, answer in zip(rows, answers)
            if answer.strip() != row["answer"]
        ]
    assert not mismatches, "\n".join(f"{i}: want {want!r}, got {got!r}" for i, want, got in mismatches)


def test_single_question_generation_stops_at_eos(model: Any, tokenizer: Any, corpus: list[dict[str, Any]]) -> None:
    row = corpus[0]
    inputs = tokenizer(chat_prompt(tokenizer, row["question"]), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs)
    new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
    assert new_tokens[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(new_tokens, skip_special_tokens=True).strip() == row["answer"]
