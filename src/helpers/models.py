"""Where the series' models and data live, and loading a chat model from disk only.

The chat model is ``assets/tiny-chat`` (a sub-million-parameter Llama trained on
``assets/serve_qa.jsonl``; ``scripts/train_tiny_chat.py`` rebuilds it). To serve a real
checkpoint instead (Qwen2.5-0.5B-Instruct, gemma-2b-it, deepseek-llm-7b-chat, ...), download
it once, then point the environment variable ``SERVE_CHAT_MODEL`` at its local directory,
or pass the directory to the app (``LLM.bind(model_path=...)``). Nothing here downloads:
loading uses ``local_files_only=True`` and never ``trust_remote_code``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MODEL_ENV = "SERVE_CHAT_MODEL"
REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS = REPO_ROOT / "assets"
TINY_CHAT = ASSETS / "tiny-chat"
QA_CORPUS = ASSETS / "serve_qa.jsonl"


def chat_model_path(path: str | os.PathLike[str] | None = None) -> str:
    """The chat model directory to load: ``path``, else ``$SERVE_CHAT_MODEL``, else tiny-chat."""
    chosen = Path(path or os.environ.get(MODEL_ENV) or TINY_CHAT).expanduser()
    if not (chosen / "config.json").is_file():
        raise FileNotFoundError(
            f"{chosen} is not a local model directory (no config.json). Models are loaded "
            f"from disk only: download a checkpoint first and set {MODEL_ENV} to its folder."
        )
    return str(chosen)


def load_chat_model(path: str | os.PathLike[str] | None = None, device: str = "cpu") -> tuple[Any, Any]:
    """Load tokenizer and causal LM from a local directory onto ``device``, ready for inference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in notebook cells
    model_dir = chat_model_path(path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype="auto")
    return tokenizer, model.to(device).eval()


def qa_corpus() -> list[dict[str, str]]:
    """The question/answer pairs the tiny chat model was trained on."""
    with QA_CORPUS.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
