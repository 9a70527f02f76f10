"""apps.embed_service: the same embeddings with and without @serve.batch, and 4xx for bad input."""

import asyncio

import numpy as np
import pytest
import requests

from apps import embed_service


@pytest.fixture(scope="module")
def services(deployed):
    deployed("unbatched", lambda: embed_service.unbatched)
    deployed("batched", lambda: embed_service.batched)


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
        ({"data": b"\xff"}, 422, "valid dictionary"),
        ({"data": b"nope", "headers": {"content-type": "application/json"}}, 422, "JSON decode error"),
        ({"json": {"text": ""}}, 422, "at least 1 character"),
        ({"json": {"txt": "hi"}}, 422, "Field required"),
        ({"json": {"text": 5}}, 422, "valid string"),
        ({"json": {"text": "x" * 2001}}, 422, "at most 2000 characters"),
    ],
)
def test_bad_input_is_4xx(services, base_url, kwargs, status, message):
    for path in ("unbatched", "batched"):
        r = requests.post(f"{base_url}/{path}", timeout=30, **kwargs)
        detail = r.json()["detail"]
        assert r.status_code == status and message in (detail if isinstance(detail, str) else detail[0]["msg"])
