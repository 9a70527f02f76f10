"""apps.chat_core: the one chat model class, without Ray.

Checks, streaming (blocking and async), cancellation, errors in the generation thread, token
accounting, history trimming: what every chat deployment relies on.
"""

import asyncio
import threading
import time

import pytest
import torch

import helpers
from apps import chat_core
from apps.chat_core import BadPrompt, ChatModel, GenerationError
from helpers.models import ASSETS

torch.set_num_threads(1)  # the model is tiny: more threads only add contention
QA = helpers.qa_corpus()


@pytest.fixture(scope="module")
def model():
    return ChatModel()


def test_loads_tiny_chat_on_the_detected_device(model):
    assert model.name == "tiny-chat"
    assert model.device == "cpu"
    assert model.max_context == 256
    assert repr(model) == "ChatModel('tiny-chat' on cpu, context 256 tokens)"


def test_model_dir_refuses_a_folder_without_a_checkpoint(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="download a checkpoint first"):
        chat_core.model_dir(tmp_path)
    monkeypatch.setenv(chat_core.MODEL_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="SERVE_CHAT_MODEL"):
        chat_core.model_dir()


@pytest.mark.parametrize("item", QA[:3], ids=lambda item: item["id"])
def test_generate_answers_verbatim_with_usage(model, item):
    result = model.generate(item["question"])
    assert result.text == item["answer"]
    assert result.finish_reason == "stop"
    assert result.prompt_tokens == model.prepare(item["question"]).prompt_tokens
    # the answer's tokens and the end-of-turn token
    assert result.completion_tokens == len(model.tokenizer(item["answer"], add_special_tokens=False)["input_ids"]) + 1


def test_max_new_tokens_cuts_the_answer_and_says_so(model):
    result = model.generate(QA[1]["question"], max_new_tokens=5)
    assert (result.completion_tokens, result.finish_reason) == (5, "length")
    assert QA[1]["answer"].startswith(result.text) and result.text != QA[1]["answer"]


def test_a_conversation_is_rendered_with_the_chat_template(model):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": QA[0]["question"]},
        {"role": "assistant", "content": QA[0]["answer"]},
        {"role": "user", "content": QA[1]["question"]},
    ]
    prompt = model.prepare(messages)
    text = model.tokenizer.decode(prompt.inputs["input_ids"][0])
    assert text == model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize(
    "prompt, error",
    [
        ("", "at least 1 character"),
        ("  \n ", "must not be blank"),
        (5, "a string or a list of messages"),
        (None, "a string or a list of messages"),
        ({"role": "user", "content": "hi"}, "a string or a list of messages"),
        ([], "at least 1 item"),
        ([{"role": "user"}], r"prompt\[0\].content: Field required"),
        ([{"role": "bot", "content": "hi"}], r"prompt\[0\].role"),
        ([{"role": "user", "content": 3}], r"prompt\[0\].content: Input should be a valid string"),
        ([{"role": "user", "content": "hi", "name": "x"}], "Extra inputs"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "last message must come from the user"),
        ("x" * 9000, "at most 8000 characters"),
        ([{"role": "user", "content": "x" * 5000}] * 2, "more than 8000 characters in all"),
        ("\ud800", "valid string"),
        ("word " * 300, "leaves no room for an answer"),
    ],
)
def test_bad_prompts_raise_422_before_generating(model, prompt, error):
    with pytest.raises(BadPrompt, match=error) as err:
        model.stream(prompt)
    assert err.value.status == 422


@pytest.mark.parametrize("value, error", [(0, "greater than or equal to 1"), (True, "valid integer"), ("5", "valid integer"), (2.5, "valid integer")])
def test_bad_max_new_tokens(model, value, error):
    with pytest.raises(BadPrompt, match=f"max_new_tokens: .*{error}"):
        model.prepare("hi", value)


def test_an_explicit_max_new_tokens_must_fit_the_context(model):
    with pytest.raises(BadPrompt, match="with max_new_tokens=250 that exceeds the model's context of 256"):
        model.prepare("What is Ray Serve?", 250)


def test_the_default_length_is_capped_to_the_room_left(model):
    long = "Serve " * 200  # 200 tokens: 56 left of 256
    prompt = model.prepare(long)
    assert prompt.max_new_tokens == model.max_context - prompt.prompt_tokens < chat_core.DEFAULT_MAX_NEW_TOKENS


@pytest.mark.parametrize("value", [-0.1, 2.5, float("nan"), "0.5"])
def test_bad_temperature(model, value):
    with pytest.raises(BadPrompt, match="temperature"):
        model.stream("hi", temperature=value)


def test_sampling_gives_text_within_the_budget(model):
    result = model.generate(QA[0]["question"], temperature=1.0, max_new_tokens=8)
    assert result.completion_tokens <= 8


def test_trim_history_drops_the_oldest_turns_to_fit(model):
    history = []
    for item in QA[:6]:
        history += [{"role": "user", "content": item["question"]}, {"role": "assistant", "content": item["answer"]}]
    messages = [{"role": "system", "content": "Be brief."}, *history, {"role": "user", "content": QA[7]["question"]}]
    with pytest.raises(BadPrompt, match="leaves no room"):
        model.prepare(messages)
    prompt = model.prepare(messages, trim_history=True)
    text = model.tokenizer.decode(prompt.inputs["input_ids"][0])
    assert "Be brief." in text and QA[7]["question"] in text  # the system message and the question stay
    assert QA[0]["question"] not in text  # the oldest turn went first
    # as many turns as leave room for a whole answer
    assert prompt.max_new_tokens == chat_core.DEFAULT_MAX_NEW_TOKENS
    assert model.generate(messages, trim_history=True).text == QA[7]["answer"]


# -- streaming ------------------------------------------------------------------------------------


def test_stream_yields_the_answer_in_several_chunks_with_usage(model):
    item = QA[3]
    stream = model.stream(item["question"])
    chunks = list(stream)
    assert len(chunks) > 5 and all(chunks)
    assert "".join(chunks) == item["answer"]
    assert stream.prompt_tokens == model.prepare(item["question"]).prompt_tokens
    assert stream.completion_tokens == model.generate(item["question"]).completion_tokens
    assert stream.finish_reason == "stop"


def test_astream_yields_the_same_chunks(model):
    async def collect():
        return [chunk async for chunk in model.astream(QA[3]["question"])]

    assert asyncio.run(collect()) == list(model.stream(QA[3]["question"]))


def test_a_chunk_interval_joins_words_into_fewer_chunks_of_the_same_text(model):
    question = QA[3]["question"]
    words = list(model.stream(question))
    # a whole minute: the first word comes at once, the rest together at the end
    assert list(model.stream(question, chunk_interval_s=60)) == [words[0], "".join(words[1:])]

    async def collect():
        return [chunk async for chunk in model.astream(question, chunk_interval_s=60)]

    assert asyncio.run(collect()) == [words[0], "".join(words[1:])]
    assert list(model.stream(question, chunk_interval_s=0)) == words


def test_a_joined_stream_still_raises_the_generation_error(model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the accelerator fell over")

    monkeypatch.setattr(model, "run_generate", broken)
    with pytest.raises(GenerationError, match="fell over"):
        list(model.stream(QA[3]["question"], chunk_interval_s=60))


def generation_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == "generate"}


def test_cancelling_a_stream_stops_the_generation(model):
    # Compare thread objects, not counts: a thread of an earlier test may end meanwhile.
    before = generation_threads()
    stream = model.stream("Tell me everything about Ray Serve " * 3, max_new_tokens=200)
    ours = generation_threads() - before
    assert len(ours) == 1
    first = next(stream)
    stream.cancel()
    rest = list(stream)  # the stream ends soon after
    assert first and stream.completion_tokens < 200 and len(rest) < 20
    helpers.wait_until(lambda: not (ours & generation_threads()), 10, "the generation thread to end")


def test_closing_an_async_stream_stops_the_generation(model):
    async def first_then_close():
        stream = model.astream("Tell me everything about Ray Serve " * 3, max_new_tokens=200)
        first = await anext(stream)
        await stream.aclose()
        async for _ in stream:  # drains quickly: the thread stops at the next token
            pass
        return first, stream.completion_tokens

    first, tokens = asyncio.run(first_then_close())
    assert first and tokens < 200


def test_an_error_in_the_generation_thread_reaches_the_reader(model, monkeypatch):
    def boom(**kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(model.model, "generate", boom)
    with pytest.raises(GenerationError, match="generation failed.*device lost"):
        list(model.stream(QA[0]["question"]))

    async def read():
        return [chunk async for chunk in model.astream(QA[0]["question"])]

    with pytest.raises(GenerationError, match="device lost"):
        asyncio.run(read())


def test_an_error_after_some_text_keeps_the_text_then_raises(model, monkeypatch):
    real = model.model.generate

    def fails_halfway(**kwargs):
        streamer = kwargs["streamer"]
        kwargs["max_new_tokens"] = 6
        real(**{**kwargs, "streamer": streamer})
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model.model, "generate", fails_halfway)
    stream = model.stream(QA[0]["question"])
    received = []
    with pytest.raises(GenerationError, match="out of memory"):
        for chunk in stream:
            received.append(chunk)
    assert received and QA[0]["answer"].startswith("".join(received))


def test_reading_a_stream_does_not_poll(model, monkeypatch):
    """The reader blocks on the queue: no CPU time spent waiting for a slow generation."""
    real = model.model.generate

    def slow(**kwargs):
        time.sleep(0.5)
        return real(**kwargs)

    monkeypatch.setattr(model.model, "generate", slow)
    stream = model.stream(QA[0]["question"])
    cpu0, wall0 = time.process_time(), time.perf_counter()
    next(stream)
    waited = time.perf_counter() - wall0
    list(stream)
    # the reader's thread (this one) slept; process_time counts every thread, so allow the
    # generation's own first step
    assert waited >= 0.45
    assert time.process_time() - cpu0 < waited


# -- several prompts in one generate() call --------------------------------------------------


@pytest.mark.parametrize("path", [None, ASSETS / "tiny-chat-qwen2"], ids=["tiny-chat", "tiny-chat-qwen2"])
def test_a_batch_answers_as_each_prompt_alone(model, path):
    chat = model if path is None else ChatModel(path)
    prompts = [item["question"] for item in QA[:12]] + [
        [{"role": "user", "content": QA[0]["question"]}, {"role": "assistant", "content": QA[0]["answer"]},
         {"role": "user", "content": QA[5]["question"]}],
    ]
    alone = [chat.generate(p) for p in prompts]
    together = chat.generate_batch(prompts)
    assert together == alone  # text, token counts and finish reasons
    assert len({r.prompt_tokens for r in together}) > 1  # the rows really were padded


def test_a_batch_keeps_each_rows_budget(model):
    prepared = [model.prepare(QA[0]["question"], 3), model.prepare(QA[1]["question"], 40), model.prepare(QA[2]["question"])]
    results = model.run_batch(prepared)
    assert [r.completion_tokens for r in results[:1]] == [3] and results[0].finish_reason == "length"
    assert results[1] == model.generate(QA[1]["question"], max_new_tokens=40)
    assert results[2].text == QA[2]["answer"] and results[2].finish_reason == "stop"
    assert model.run_batch([]) == []


def test_a_batch_costs_less_than_its_prompts_one_by_one(model):
    prompts = [item["question"] for item in QA[:16]]
    model.generate_batch(prompts[:2])  # warm up
    start = time.perf_counter()
    for p in prompts:
        model.generate(p)
    one_by_one = time.perf_counter() - start
    start = time.perf_counter()
    model.generate_batch(prompts)
    together = time.perf_counter() - start
    assert together < one_by_one / 2, (together, one_by_one)


def test_a_bad_prompt_in_a_batch_raises_before_generating(model):
    with pytest.raises(BadPrompt, match="must not be blank"):
        model.generate_batch([QA[0]["question"], "   "])
