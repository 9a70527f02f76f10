"""The measurements of notebook 06 as functions, and ``make bench`` to run them from a shell.

``python -m bench`` (from ``notebooks/``; ``make bench`` does that) starts a private
Ray, measures the embedding model's own batching gain, the embedding service unbatched and
batched at 1, 8 and 32 concurrent clients, what Serve costs per request, and the chat model's
answer streamed bare, over HTTP and through a handle, then prints the tables and the ratios.
``make bench`` then runs ``python -m fastpaths`` for Serve's fast paths (``fastpaths.py`` uses
this module; this module does not use it).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from helpers.load import LoadResult, run_load

TEXTS = [f"How do I scale deployment number {i} in Ray Serve?" for i in range(32)]


def text_body(i: int) -> dict[str, str]:
    """A request body for the embedding service: a different text for every request."""
    return {"text": TEXTS[i % len(TEXTS)] + f" ({i})"}


def model_batching_gain(threads: int, batch_size: int = 32, rounds: int = 3) -> tuple[float, float]:
    """Milliseconds per text for all-MiniLM-L6-v2 in this process: one at a time, and batched.

    The ratio of the two is the most batching can gain for this model on this machine. Each
    way is timed ``rounds`` times, taking turns, and the best round counts: on a busy machine
    other work only ever adds time.
    """
    from apps.embedder import MiniLM

    model = MiniLM(num_threads=threads)
    texts = TEXTS[:batch_size]
    model.embed(texts)  # warm up
    singles, batches = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for text in texts:
            model.embed([text])
        singles.append(1000 * (time.perf_counter() - start) / len(texts))
        start = time.perf_counter()
        model.embed(texts)
        batches.append(1000 * (time.perf_counter() - start) / len(texts))
    return min(singles), min(batches)


async def services_under_load(
    urls: dict[str, str], clients: tuple[int, ...] = (1, 8, 32), duration_s: float = 1.5, warmup_s: float = 0.3
) -> dict[tuple[str, int], LoadResult]:
    """Each service at each number of concurrent clients, one after the other."""
    results = {}
    for n in clients:
        for name, url in urls.items():
            results[name, n] = await run_load(
                url, clients=n, duration_s=duration_s, warmup_s=warmup_s, body_factory=text_body
            )
    return results


async def handle_throughput(call: Any, concurrency: int, seconds: float) -> float:
    """Calls per second of ``await call(i)`` from ``concurrency`` concurrent callers."""
    done = 0
    end = time.perf_counter() + seconds

    async def caller(i: int) -> None:
        nonlocal done
        while time.perf_counter() < end:
            await call(i)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return done / (time.perf_counter() - start)


async def per_request_cost(plain_url: str, serve_url: str, handle: Any, n: int = 300) -> dict[str, float]:
    """Median milliseconds per request, one at a time: function, FastAPI, Serve HTTP, handle."""
    from apps import perf

    start = time.perf_counter()
    for _ in range(10_000):
        perf.hello()
    bare_ms = 1000 * (time.perf_counter() - start) / 10_000
    plain = await run_load(plain_url, clients=1, requests_per_client=n, method="GET", warmup_s=0.2)
    served = await run_load(serve_url, clients=1, requests_per_client=n, method="GET", warmup_s=0.2)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await handle.call.remote()
        times.append(time.perf_counter() - start)
    return {
        "function call": bare_ms,
        "FastAPI + uvicorn (HTTP)": 1000 * plain.p50,
        "Serve, HTTP": 1000 * served.p50,
        "Serve, DeploymentHandle": 1000 * statistics.median(times),
    }


# -- streaming -----------------------------------------------------------------------------------


@dataclass
class StreamTiming:
    """Medians over several streams of one answer: first chunk, whole answer, the rest after
    the first chunk (each run's own difference), and the number of chunks."""

    first_ms: float
    total_ms: float
    after_first_ms: float
    chunks: int
    tokens: int
    text: str

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / (self.total_ms / 1000)


class _Runs:
    """Collects each run's first-chunk time, total time and chunk count."""

    def __init__(self) -> None:
        self.firsts: list[float] = []
        self.totals: list[float] = []
        self.chunks: list[int] = []

    def add(self, first: float, total: float, chunks: int) -> None:
        self.firsts.append(first)
        self.totals.append(total)
        self.chunks.append(chunks)

    def timing(self, tokens: int, text: str) -> StreamTiming:
        after = [total - first for first, total in zip(self.firsts, self.totals)]
        return StreamTiming(
            1000 * statistics.median(self.firsts),
            1000 * statistics.median(self.totals),
            1000 * statistics.median(after),
            round(statistics.median(self.chunks)),
            tokens,
            text,
        )


def _bare_once(model: Any, question: str, chunk_interval_s: float) -> tuple[float, float, list[str], int]:
    """One stream in this process: seconds to the first chunk and to the end, chunks, tokens."""
    start = time.perf_counter()
    stream = model.stream(question, chunk_interval_s=chunk_interval_s)
    chunks = [next(stream)]
    first = time.perf_counter() - start
    chunks += list(stream)
    return first, time.perf_counter() - start, chunks, stream.completion_tokens


async def _http_once(session: Any, url: str, body: dict[str, Any]) -> tuple[float, float, list[str]]:
    """One streamed HTTP answer (``StreamingResponse``), read chunk by chunk as it arrives."""
    start = time.perf_counter()
    async with session.post(url, json=body) as response:
        response.raise_for_status()
        pieces = response.content.iter_any()
        chunks = [(await anext(pieces)).decode()]
        first = time.perf_counter() - start
        chunks += [piece.decode() async for piece in pieces]
    return first, time.perf_counter() - start, chunks


async def _handle_once(streaming: Any, question: str) -> tuple[float, float, list[str]]:
    """One ``streaming.stream.remote(question)``: chunks as the replica yields them."""
    start = time.perf_counter()
    stream = streaming.stream.remote(question)
    chunks = [await anext(stream)]
    first = time.perf_counter() - start
    chunks += [chunk async for chunk in stream]
    return first, time.perf_counter() - start, chunks


def bare_streaming(
    model: Any, question: str, runs: int = 15, threads: int = 1, chunk_interval_s: float = 0.0
) -> StreamTiming:
    """``ChatModel.stream`` in this process, on ``threads`` CPU threads (a replica given half a
    CPU gets one: Ray sets its OMP_NUM_THREADS from num_cpus)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _bare_once(model, question, chunk_interval_s)  # warm up
        measured = _Runs()
        for _ in range(runs):
            first, total, chunks, tokens = _bare_once(model, question, chunk_interval_s)
            measured.add(first, total, len(chunks))
        return measured.timing(tokens, "".join(chunks))
    finally:
        torch.set_num_threads(before)


async def http_streaming(url: str, body: dict[str, Any], tokens: int, runs: int = 15) -> StreamTiming:
    """A streamed HTTP answer, ``runs`` times after one that warms up."""
    import aiohttp

    measured = _Runs()
    async with aiohttp.ClientSession() as session:
        await _http_once(session, url, body)  # warm up
        for _ in range(runs):
            first, total, chunks = await _http_once(session, url, body)
            measured.add(first, total, len(chunks))
    return measured.timing(tokens, "".join(chunks))


async def handle_streaming(handle: Any, question: str, tokens: int, runs: int = 15) -> StreamTiming:
    """``handle.options(stream=True).stream.remote(question)``, ``runs`` times after a warm-up."""
    streaming = handle.options(stream=True)
    measured = _Runs()
    await _handle_once(streaming, question)  # warm up
    for _ in range(runs):
        first, total, chunks = await _handle_once(streaming, question)
        measured.add(first, total, len(chunks))
    return measured.timing(tokens, "".join(chunks))


def longest_answer_question() -> str:
    """The corpus question with the longest answer (86 tokens of tiny-chat): a stream long
    enough to measure a pace."""
    import helpers

    return next(q["question"] for q in helpers.qa_corpus() if q["id"] == "list-serve-actors")


def interval_name(chunk_interval_s: float) -> str:
    return f"{1000 * chunk_interval_s:.0f} ms" if chunk_interval_s > 0 else "word"


def streaming_table(timings: dict[float, dict[str, StreamTiming]]) -> str:
    """For each chunk interval, each way's first chunk, answer time, tokens/s and chunks, as a
    share of bare streaming with the same interval (its first row): tokens/s over the whole
    answer, pace after the first chunk, and what the first chunk costs on top."""
    rows = []
    for interval, ways in timings.items():
        bare = next(iter(ways.values()))
        for way, t in ways.items():
            rows.append(
                {
                    "a chunk per": interval_name(interval),
                    "way": way,
                    "chunks": t.chunks,
                    "first chunk ms": round(t.first_ms, 1),
                    "answer ms": round(t.total_ms, 1),
                    "tokens/s": round(t.tokens_per_s),
                    "of bare": f"{100 * t.tokens_per_s / bare.tokens_per_s:.0f}%",
                    "pace of bare": f"{100 * bare.after_first_ms / t.after_first_ms:.0f}%",
                    "first chunk +ms": round(t.first_ms - bare.first_ms, 1),
                }
            )
    return pd.DataFrame(rows).to_string(index=False)


async def streaming_three_ways(
    runs: int = 15, chunk_intervals: tuple[float, ...] = (0.0, 0.02)
) -> dict[float, dict[str, StreamTiming]]:
    """The chatbot of notebook 05 (its model on one replica), for each chunk interval: its
    longest answer streamed bare, over HTTP and through a handle (each gives the same text).
    The three ways take turns, one stream each, so that whatever else the machine does
    meanwhile slows all three alike; each way's first stream warms it up and is not counted."""
    import aiohttp
    import torch
    from ray import serve

    from apps import chatbot
    from apps.chat_core import ChatModel
    from apps.llm import Generator

    model = ChatModel()
    question = longest_answer_question()
    url, body = "http://127.0.0.1:8000/chat/generate", {"message": question}
    timings: dict[float, dict[str, StreamTiming]] = {}
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the replica, given half a CPU, runs it
    try:
        for interval in chunk_intervals:
            generator = Generator.options(num_replicas=1).bind(chunk_interval_s=interval)
            serve.run(chatbot.ChatUI.bind(generator), name="chat", route_prefix="/chat")
            streaming = serve.get_deployment_handle("Generator", app_name="chat").options(stream=True)
            measured = {way: _Runs() for way in ("bare, in process", "Serve, HTTP", "Serve, handle")}
            texts: dict[str, str] = {}
            async with aiohttp.ClientSession() as session:
                for i in range(runs + 1):
                    first, total, chunks, tokens = _bare_once(model, question, interval)
                    if i:
                        measured["bare, in process"].add(first, total, len(chunks))
                    texts["bare, in process"] = "".join(chunks)
                    for way, once in (("Serve, HTTP", _http_once(session, url, body)),
                                      ("Serve, handle", _handle_once(streaming, question))):
                        first, total, chunks = await once
                        if i:
                            measured[way].add(first, total, len(chunks))
                        texts[way] = "".join(chunks)
            timings[interval] = {way: runs_of.timing(tokens, texts[way]) for way, runs_of in measured.items()}
            serve.delete("chat")
    finally:
        torch.set_num_threads(before)
    return timings


async def _main() -> None:
    from ray import serve

    import helpers
    from apps import embed_service, perf

    single_ms, batch_ms = model_batching_gain(embed_service.THREADS)
    helpers.start()
    try:
        serve.run(embed_service.unbatched, name="unbatched", route_prefix="/unbatched")
        serve.run(embed_service.batched, name="batched", route_prefix="/batched")
        urls = {name: f"http://127.0.0.1:8000/{name}" for name in ("unbatched", "batched")}
        results = await services_under_load(urls, duration_s=3, warmup_s=0.5)
        serve.delete("unbatched")
        serve.delete("batched")

        serve.run(perf.hello_app, name="hello", route_prefix="/hello")
        with helpers.serve_locally(perf.plain_fastapi_app(), 8123) as plain_url:
            cost = await per_request_cost(plain_url + "/", "http://127.0.0.1:8000/hello", serve.get_app_handle("hello"))
        serve.delete("hello")

        streams = await streaming_three_ways()
    finally:
        helpers.stop()

    print("Embedding service, requests per second and latency:")
    print(pd.DataFrame([{"service": name, **r.row()} for (name, _), r in results.items()]).to_string(index=False))
    ceiling = single_ms / batch_ms
    gain = results["batched", 32].throughput / results["unbatched", 32].throughput
    print(f"\nmodel alone: {single_ms:.1f} ms per text single, {batch_ms:.1f} ms in batches of 32")
    print(f"batching ratio at 32 clients (batched / unbatched throughput): {gain:.2f}x")
    print(f"the model's own batching gain (the ceiling):                    {ceiling:.2f}x")
    print(f"share of the ceiling's gain reached:                            {100 * (gain - 1) / (ceiling - 1):.0f}%")
    print("\nWhat Serve costs per request (median, one client):")
    print(pd.DataFrame([{"way": way, "ms": round(ms, 3)} for way, ms in cost.items()]).to_string(index=False))

    print("\nThe chat model's longest answer streamed, a chunk per word and at most one each 20 ms")
    print("(medians of 15; each way against bare streaming with the same chunks):")
    print(streaming_table(streams))


if __name__ == "__main__":
    asyncio.run(_main())
