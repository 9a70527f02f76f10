"""The answer key the notebooks check the tiny chat model against.

The chat model itself is loaded by the apps (``notebooks/apps/chat_core.py``), from
``assets/tiny-chat`` or from the local checkpoint folder that ``$SERVE_CHAT_MODEL`` names.
The tiny model was trained (``scripts/train_tiny_chat.py``) on the question/answer pairs of
``assets/serve_qa.jsonl`` and repeats those answers word for word; another checkpoint does not,
so cells that compare answers with the corpus ask :func:`checks_verbatim` first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MODEL_ENV = "SERVE_CHAT_MODEL"  # the variable the apps read (apps/chat_core.py)
REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS = REPO_ROOT / "assets"
TINY_CHAT = ASSETS / "tiny-chat"
QA_CORPUS = ASSETS / "serve_qa.jsonl"


def qa_corpus() -> list[dict[str, str]]:
    """The question/answer pairs the tiny chat model was trained on."""
    with QA_CORPUS.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def chat_model_name() -> str:
    """The folder name of the chat model the apps will load (``tiny-chat`` unless overridden)."""
    return Path(os.environ.get(MODEL_ENV) or TINY_CHAT).expanduser().resolve().name


def checks_verbatim() -> bool:
    """True when the apps serve tiny-chat, whose answers must equal the corpus word for word.

    With another checkpoint (``$SERVE_CHAT_MODEL``) the notebooks still run every cell, and
    print instead of assert what only the tiny model guarantees.
    """
    return chat_model_name() == TINY_CHAT.name
