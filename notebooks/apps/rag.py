"""Retrieval + generation from four deployments: ``serve run apps.rag:app`` (from ``notebooks/``).

The application answers questions about Ray Serve from the Q&A corpus in ``assets/``::

    RagIngress (FastAPI) --search--> Retriever --embed--> Embedder   (all-MiniLM-L6-v2)
               \\--------chat------> Generator                        (the chat model of llm.py)

    curl -X POST http://127.0.0.1:8000/ask -H 'content-type: application/json' \\
         -d '{"question": "How can I make a replica use a GPU?", "top_k": 3}'

Routes (``/docs`` shows them with their schemas; bad input gets a 422 naming the field):

* ``POST /ask`` ``{"question": str, "top_k": 1..5}`` -> ``{"answer", "sources", "prompt"}``:
  the Retriever embeds the question (through the Embedder) and ranks the corpus; the
  Generator answers a prompt built from what was retrieved.
* ``POST /fanout`` ``{"questions": [str, ...]}`` (1..4) -> ``{"answers", "parallel_s",
  "sequential_s"}``: the Generator answers every question, all asked at once (its two replicas
  work at the same time), then one after the other, timed inside the ingress.

``/ask`` awaits the retrieved entries in the ingress, because it builds the prompt from them
and returns them. Where one deployment's output is another's input as it is, a
``DeploymentResponse`` is passed on without awaiting it, e.g. batch retrieval for many
questions: ``retriever.search_vectors.remote(embedder.embed.remote(questions), 3)``.

The Generator is the chat model's handle-only deployment from ``llm.py``; the model code
lives in one place (``chat_core.py``). The series' tiny model
only knows its corpus questions, and extra text in the prompt derails it. So by default
(``prompt_mode="canonical"``) the prompt is the *corpus wording* of the best-matching question:
retrieval turns a paraphrase into a question the model knows. With a real instruction-tuned
checkpoint (``SERVE_CHAT_MODEL`` pointing at e.g. a local Qwen2.5-0.5B-Instruct), build the app
with ``RagIngress.bind(embedder, retriever, generator, prompt_mode="context")`` instead: the
retrieved answers then go into the prompt as context, the usual RAG prompt
(see :func:`build_prompt`).

To use it in a project of your own, copy it with ``embedder.py``, ``llm.py`` and what that
imports, and set ``SERVE_QA_CORPUS`` to your own JSON-lines corpus.
"""

# No `from __future__ import annotations` in this module: Serve rebuilds the ingress's route
# methods without `self`, and FastAPI could then not resolve string annotations such as
# "AskRequest" (it would expect a query parameter named `request`).
import asyncio
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr
from ray import serve
from ray.serve.handle import DeploymentHandle

if __package__:  # imported as part of the repository's `apps` package
    from .accelerator import ray_actor_options
    from .embedder import Embedder
    from .llm import Generator
    from .validation import clear_errors
else:  # copied into a project of your own, next to those modules
    from accelerator import ray_actor_options
    from embedder import Embedder
    from llm import Generator
    from validation import clear_errors

PromptMode = Literal["canonical", "context"]
MAX_QUESTION_CHARS = 500
MAX_TOP_K = 5
MAX_FANOUT = 4
CORPUS_ENV = "SERVE_QA_CORPUS"
# The series' Q&A corpus, where the repository keeps it; anywhere else set $SERVE_QA_CORPUS.
DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "assets" / "serve_qa.jsonl"


def load_corpus(path: str | os.PathLike[str] | None = None) -> list[dict[str, str]]:
    """The question/answer entries to retrieve from (JSON lines with id, question, answer)."""
    chosen = Path(path or os.environ.get(CORPUS_ENV) or DEFAULT_CORPUS)
    with chosen.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
# --------------------------------------------------------------------------------------------
# Retriever
# --------------------------------------------------------------------------------------------


def index_texts(entry: dict[str, str]) -> tuple[str, str]:
    """The texts that represent one corpus entry in the index: its question, and question+answer.

    An entry scores as the better of the two (see :func:`rank`). Measured on 31 paraphrased
    questions (tests/test_rag_components.py), question alone put the right entry first for 26,
    question+answer for 27 (the answer brings the words people ask with: "concurrently" for
    max_ongoing_requests, "queued" for BackPressureError), and the better of both for 29. The
    question alone is kept because with question+answer only, one corpus question verbatim
    ("Where do I set the route_prefix ...") ranked another entry first; with both, all 124
    corpus questions find themselves.
    """
    return entry["question"], f"{entry['question']} {entry['answer']}"


def rank(query_vec: Sequence[float], corpus_vecs: Any, top_k: int) -> list[tuple[int, float]]:
    """The ``top_k`` (index, score) pairs of ``corpus_vecs`` closest to ``query_vec``, best first.

    Vectors are unit length, so the dot product is the cosine similarity. ``corpus_vecs`` is
    ``(entries, dims)``, or ``(entries, views, dims)`` when each entry has several texts; an
    entry then scores as its best view. Ties keep corpus order.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    scores = np.asarray(corpus_vecs, dtype=np.float32) @ np.asarray(query_vec, dtype=np.float32)
    if scores.ndim == 2:
        scores = scores.max(axis=1)
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [(int(i), float(scores[i])) for i in order]


@serve.deployment(
    num_replicas=1,
    # A tenth of a CPU: it only does a (124 x 2 x 384) dot product per query and waits on
    # the Embedder the rest of the time.
    ray_actor_options={"num_cpus": 0.1},
)
class Retriever:
    """Ranks the Q&A corpus against a question by cosine similarity of their embeddings."""

    def __init__(self, embedder: DeploymentHandle, corpus: list[dict[str, str]] | None = None) -> None:
        self.embedder = embedder
        self.corpus = corpus if corpus is not None else load_corpus()
        self._vectors: np.ndarray | None = None  # (entries, 2, 384), built on first use
        # A constructor cannot await, so the index is built by the first search; the lock
        # makes concurrent first searches wait for one build instead of starting several.
        self._lock = asyncio.Lock()

    async def index(self) -> np.ndarray:
        """The corpus embeddings, computed once (through the Embedder) and then kept."""
        if self._vectors is None:
            async with self._lock:
                if self._vectors is None:  # another request may have built it meanwhile
                    views = [index_texts(entry) for entry in self.corpus]
                    flat = [text for texts in views for text in texts]
                    vectors = await self.embedder.embed.remote(flat)
                    self._vectors = np.asarray(vectors, dtype=np.float32).reshape(
                        len(self.corpus), len(views[0]), -1
                    )
        return self._vectors

    # __retriever_search_begin__
    async def search(self, query: str, top_k: int = 3) -> list[dict[str, Any]]:
        """The ``top_k`` corpus entries closest to ``query``: ``{id, question, answer, score}``."""
        # Start embedding the query now: it runs on the Embedder while this replica builds
        # (or simply fetches) the index.
        query_vecs = self.embedder.embed.remote([query])
        index = await self.index()
        [query_vec] = await query_vecs
        return self._hits(query_vec, index, top_k)
    # __retriever_search_end__

    async def search_vectors(
        self, query_vecs: list[list[float]], top_k: int = 3
    ) -> list[list[dict[str, Any]]]:
        """:meth:`search` for queries that are embedded already, one result list per vector.

        It takes exactly what ``Embedder.embed`` returns, so that a caller can chain the two
        without waiting for the vectors itself::

            hits = await retriever.search_vectors.remote(embedder.embed.remote(questions), 3)
        """
        index = await self.index()
        return [self._hits(vec, index, top_k) for vec in query_vecs]

    def _hits(self, query_vec: Sequence[float], index: np.ndarray, top_k: int) -> list[dict[str, Any]]:
        return [
            {
                "id": self.corpus[i]["id"],
                "question": self.corpus[i]["question"],
                "answer": self.corpus[i]["answer"],
                "score": round(score, 4),
            }
            for i, score in rank(query_vec, index, top_k)
        ]


# --------------------------------------------------------------------------------------------
# Prompt
# --------------------------------------------------------------------------------------------

CONTEXT_TEMPLATE = (
    "Answer the question using only the passages below. If they do not contain the answer, "
    "say that you do not know.\n\n{passages}\n\nQuestion: {question}"
)


def build_prompt(
    question: str, sources: Sequence[dict[str, Any]], mode: PromptMode = "canonical"
) -> str:
    """The prompt for the generator, from the user's question and the retrieved entries.

    * ``"canonical"`` (default, for the tiny model): the best entry's question in the corpus
      wording, nothing else. The tiny model knows only its corpus questions and derails when
      the prompt carries passages, so retrieval's job here is to map a paraphrase onto a
      question it knows.
    * ``"context"`` (for a real instruction-tuned checkpoint): the standard RAG prompt, with
      the retrieved answers as numbered passages and the user's own question.
    """
    if not sources:
        raise ValueError("build_prompt needs at least one retrieved source")
    if mode == "canonical":
        return sources[0]["question"]
    if mode == "context":
        passages = "\n\n".join(f"[{n}] {src['answer']}" for n, src in enumerate(sources, start=1))
        return CONTEXT_TEMPLATE.format(passages=passages, question=question.strip())
    raise ValueError(f"mode must be 'canonical' or 'context', got {mode!r}")


# --------------------------------------------------------------------------------------------
# HTTP API: request and response models
# --------------------------------------------------------------------------------------------


# __rag_schema_begin__
def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value.strip()


# A question about Ray Serve, in the user's own words: a string of 1..500 characters, not blank.
Question = Annotated[
    StrictStr,
    Field(min_length=1, max_length=MAX_QUESTION_CHARS, examples=["How can I make a replica use a GPU?"]),
    AfterValidator(_not_blank),
]


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: Question
    # strict: a JSON number only; "3" and true are refused instead of converted.
    top_k: int = Field(3, ge=1, le=MAX_TOP_K, strict=True, description="How many sources to retrieve.")
# __rag_schema_end__


class Source(BaseModel):
    id: str
    question: str
    score: float = Field(description="Cosine similarity to the question, -1..1.")


class AskResponse(BaseModel):
    answer: str
    sources: list[Source]
    prompt: str = Field(description="The prompt sent to the generator.")


class FanoutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    questions: list[Question] = Field(min_length=1, max_length=MAX_FANOUT, description="Questions to answer.")


class FanoutResponse(BaseModel):
    answers: list[str] = Field(description="The Generator's answers, in the order of the questions.")
    parallel_s: float = Field(description="Seconds to get every answer, all asked at once.")
    sequential_s: float = Field(description="The same questions asked one after the other.")


# --------------------------------------------------------------------------------------------
# Ingress
# --------------------------------------------------------------------------------------------

# clear_errors: besides FastAPI's 422 for a body that does not match the schema, a prompt the
# chat model cannot take (BadPrompt, raised in the Generator and re-raised here by the handle
# call) gets its 422, on every route.
api = clear_errors(
    FastAPI(
        title="Ray Serve Q&A (retrieval + generation)",
        description="Answers questions about Ray Serve from a small Q&A corpus.",
    )
)


# __rag_ingress_begin__
@serve.deployment(
    num_replicas=1,
    # A tenth of a CPU: it parses JSON and awaits the other deployments; no model here.
    ray_actor_options={"num_cpus": 0.1},
)
@serve.ingress(api)
class RagIngress:
    def __init__(
        self,
        embedder: DeploymentHandle,
        retriever: DeploymentHandle,
        generator: DeploymentHandle,
        prompt_mode: PromptMode = "canonical",
    ) -> None:
        if prompt_mode not in ("canonical", "context"):
            raise ValueError(f"prompt_mode must be 'canonical' or 'context', got {prompt_mode!r}")
        self.embedder = embedder
        self.retriever = retriever
        self.generator = generator
        self.prompt_mode = prompt_mode

    @api.post("/ask", response_model=AskResponse)
    async def ask(self, request: AskRequest) -> AskResponse:
        """Retrieve the closest corpus entries, then generate an answer from them."""
        # The Retriever calls the Embedder for the question (and, once, for the corpus).
        hits = await self.retriever.search.remote(request.question, request.top_k)
        prompt = build_prompt(request.question, hits, self.prompt_mode)
        # No DeploymentResponse chaining here: the prompt is built from the hits in this
        # replica, and the hits are returned too, so the ingress needs them itself. Chaining
        # fits where one deployment's output is another's input as it is, e.g.
        # retriever.search_vectors.remote(embedder.embed.remote(questions), k): Serve then
        # resolves the first response and the vectors go from the Embedder to the Retriever
        # without waiting in (or passing through) the caller.
        # A "context" prompt longer than the model's context raises BadPrompt: a 422.
        answer = await self.generator.chat.remote(prompt)
        return AskResponse(
            answer=answer,
            sources=[Source(id=h["id"], question=h["question"], score=h["score"]) for h in hits],
            prompt=prompt,
        )
    # __rag_ingress_end__

    @api.post("/fanout", response_model=FanoutResponse)
    async def fanout(self, request: FanoutRequest) -> FanoutResponse:
        """The Generator answers every question: all at once, then one after the other."""
        # __rag_fanout_begin__
        questions = request.questions
        # At once: each .remote() returns a DeploymentResponse immediately, the request
        # already on its way; gather awaits them together. Serve spreads them over the
        # Generator's replicas.
        start = time.perf_counter()
        answers = await asyncio.gather(*(self.generator.chat.remote(q) for q in questions))
        parallel_s = time.perf_counter() - start

        # One after the other: each call starts when the previous answer is back.
        start = time.perf_counter()
        for question in questions:
            await self.generator.chat.remote(question)
        sequential_s = time.perf_counter() - start
        # __rag_fanout_end__
        return FanoutResponse(answers=answers, parallel_s=parallel_s, sequential_s=sequential_s)


# __rag_graph_begin__
embedder = Embedder.bind()
retriever = Retriever.bind(embedder)
generator = Generator.options(
    num_replicas=2,
    # One answer at a time per replica: two generations in one replica process would only
    # take turns on its CPU, so two requests at once go to the two replicas instead.
    max_ongoing_requests=1,
    # Half a CPU and half a device each: the two replicas share one GPU/NPU (the Embedder
    # takes another half). For a multi-billion-parameter checkpoint give each a whole
    # device (fraction=1).
    ray_actor_options=ray_actor_options(fraction=0.5, num_cpus=0.5),
).bind()
app = RagIngress.bind(embedder, retriever, generator)
# __rag_graph_end__
