"""apps.embed_service: the same embeddings with and without @serve.batch, and 4xx for bad input."""

import asyncio

import numpy as np
import pytest
import requests

from apps import embed_service


@pytest.fixture(scope="module")
def services(serve_cluster):
    from ray import serve

    serve.run(embed_service.unbatched, name="unbatched", route_prefix="/unbatched")
    serve.run(embed_service.batched, name="batched", route_prefix="/batched")
    yield
    serve.delete("unbatched")
    serve.delete("batched")


def test_batched_equals_unbatched_under_concurrency(services, base_url):
    import aiohttp

    texts = [f"How many replicas does deployment {i} need?" for i in range(24)]

    async def embed_all(path: str) -> list[list[float]]:
        async with aiohttp.ClientSession() as session:

            async def one(text: str) -> list[float]:
                async with session.post(f"{base_url}/{path}", json={"text": text}) as r:
                    assert r.status == 200
                    return (await r.json())["embedding"]

            return await asyncio.gather(*(one(t) for t in texts))

    unbatched = np.array(asyncio.run(embed_all("unbatched")))
    batched = np.array(asyncio.run(embed_all("batched")))
    assert unbatched.shape == batched.shape == (24, 384)
    # Padding in a batch changes float rounding only.
    assert np.allclose(unbatched, batched, atol=1e-4)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, status, message",
    [
        ({"data": b"nope"}, 400, "body must be JSON"),
        ({"json": {"text": "  "}}, 422, "non-empty string"),
        ({"json": {"txt": "hi"}}, 422, "non-empty string"),
        ({"json": {"text": "x" * 2001}}, 422, "longer than 2000"),
    ],
)
def test_bad_input_is_4xx(services, base_url, kwargs, status, message):
    for path in ("unbatched", "batched"):
        r = requests.post(f"{base_url}/{path}", timeout=30, **kwargs)
        assert r.status_code == status and message in r.json()["error"]
