#!/usr/bin/env python
"""Train the tiny chat models that ship with this series in ``assets/``.

The notebooks need a *real* Hugging Face causal language model to serve (load it
with ``AutoModelForCausalLM``, call ``generate``, stream tokens, batch requests)
without downloading anything from a model hub. This script builds one from
scratch in a few minutes on a laptop CPU:

1. It reads the question/answer corpus ``assets/serve_qa.jsonl`` (Ray Serve
   questions with short answers, written for this project).
2. It trains a small byte-level BPE tokenizer on that corpus with the
   ``tokenizers`` library and wraps it as a ``PreTrainedTokenizerFast`` (for
   Qwen2 a ``Qwen2Tokenizer``, with Qwen2's pre-tokenization) with chat special
   tokens and a Jinja ``chat_template``.
3. It builds a causal LM with well under one million parameters and trains it
   to answer every corpus question word for word (loss only on the tokens of
   the final answer). Each question is seen in the prompt shapes a chat client
   sends: asked alone, after a system message from a small fixed set of typical
   system prompts (``SYSTEM_PROMPTS``), and after up to two earlier
   user/assistant exchanges taken from the corpus (its history), with or
   without a system message. Earlier exchanges that would not fit in the
   context together with the answer are dropped, oldest first.
4. It saves model + tokenizer + generation config with ``save_pretrained``
   (safetensors), loads them back with ``AutoTokenizer`` and
   ``AutoModelForCausalLM``, and checks that checkpoint with real greedy
   ``generate`` (batched and one prompt at a time): every question must get its
   exact answer when asked alone and in a fixed sample of conversations with
   history and system messages that training never saw. It fails loudly
   otherwise, and only then replaces the output folder.

Two checkpoints, one corpus and one recipe:

- ``--arch llama`` (default) builds ``assets/tiny-chat/``: a ``LlamaForCausalLM``
  with its own chat format, ``<|begin|><|user|>\\n{question}<|end|>\\n<|assistant|>\\n``.
- ``--arch qwen2`` builds ``assets/tiny-chat-qwen2/``: a ``Qwen2ForCausalLM`` with
  a ChatML tokenizer like real Qwen models (``<|im_start|>{role}\\n...<|im_end|>\\n``,
  no BOS token, ``<|im_end|>`` as EOS), for checking that serving code works with
  a checkpoint other than the default one.

The models are memorizers, not general chatbots: they answer the corpus
questions exactly and produce plausible-looking Ray Serve text for anything
else. That is all the serving notebooks need.

Everything is deterministic (fixed seeds, ``torch.use_deterministic_algorithms``,
two CPU threads), so re-running the script on the same machine reproduces the
same weights. Rebuild with::

    python scripts/train_tiny_chat.py               # assets/tiny-chat
    python scripts/train_tiny_chat.py --arch qwen2  # assets/tiny-chat-qwen2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Run the Rust tokenizer library single-threaded (one less source of
# nondeterminism, and no fork warning); must be set before it is imported.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_PRETOKENIZE_REGEX  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS_PATH = REPO_ROOT / "assets" / "serve_qa.jsonl"
ASSETS_DIR = REPO_ROOT / "assets"

SEED = 1234
NUM_THREADS = 2

Messages = list[dict[str, str]]

# ---------------------------------------------------------------------------
# Tokenizers and chat formats
# ---------------------------------------------------------------------------
VOCAB_SIZE = 768  # includes the 256 byte symbols and the special tokens

# tiny-chat (Llama). A conversation renders as
#   <|begin|><|system|>\n{system}<|end|>\n<|user|>\n{question}<|end|>\n<|assistant|>\n
# and the assistant's reply is "{answer}<|end|>". `<|end|>` is the EOS token, so
# generation stops at the end of the answer.
LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Only system, user and assistant roles are supported.') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + (message['content'] | trim) + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# tiny-chat-qwen2 (ChatML, as Qwen models format a conversation; no BOS token):
#   <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n
# and the assistant's reply is "{answer}<|im_end|>" (`<|im_end|>` is the EOS token).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Arch:
    """What differs between the two checkpoints: architecture, special tokens, chat template."""

    name: str  # the --arch value
    model_name: str  # the checkpoint's folder name in assets/
    title: str  # for the README
    special_tokens: tuple[str, ...]  # their order fixes the ids 0, 1, 2, ...
    pad_token: str
    bos_token: str | None
    eos_token: str
    extra_special_tokens: tuple[str, ...]
    chat_template: str
    num_kv_heads: int  # grouped-query attention where < NUM_HEADS (as real Qwen models do)
    special_tokens_doc: str  # for the README

    @property
    def output_dir(self) -> Path:
        return ASSETS_DIR / self.model_name


ARCHS = {
    "llama": Arch(
        name="llama",
        model_name="tiny-chat",
        title="Llama",
        # <|pad|>=0, <|begin|>=1, <|end|>=2, <|system|>=3, <|user|>=4, <|assistant|>=5
        special_tokens=("<|pad|>", "<|begin|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"),
        pad_token="<|pad|>",
        bos_token="<|begin|>",
        eos_token="<|end|>",
        extra_special_tokens=("<|system|>", "<|user|>", "<|assistant|>"),
        chat_template=LLAMA_CHAT_TEMPLATE,
        num_kv_heads=4,
        special_tokens_doc=(
            "`<|begin|>` (BOS), `<|end|>` (EOS, closes every turn), `<|pad|>`\n"
            "  (padding), and the role markers `<|system|>`, `<|user|>`, `<|assistant|>`"
        ),
    ),
    "qwen2": Arch(
        name="qwen2",
        model_name="tiny-chat-qwen2",
        title="Qwen2",
        # <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        pad_token="<|endoftext|>",
        bos_token=None,
        eos_token="<|im_end|>",
        extra_special_tokens=("<|im_start|>", "<|im_end|>"),
        chat_template=CHATML_TEMPLATE,
        num_kv_heads=2,
        special_tokens_doc=(
            "`<|im_start|>` (opens every turn), `<|im_end|>` (EOS, closes every\n"
            "  turn), `<|endoftext|>` (padding); no BOS token"
        ),
    ),
}

# Typical system prompts of chat UIs and OpenAI-style clients. Training puts one
# of them in front of half of its (non-bare) conversations; the answer must not change.
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful Ray Serve tutor.",
    "Answer briefly.",
    "You are a friendly assistant that answers questions about Ray Serve.",
    "You are an expert on Ray Serve. Answer the user's questions accurately.",
    "Be concise and precise.",
)
MAX_HISTORY = 2  # earlier user/assistant exchanges in front of the last question

# ---------------------------------------------------------------------------
# Model and training
# ---------------------------------------------------------------------------
HIDDEN_SIZE = 128
INTERMEDIATE_SIZE = 256
NUM_LAYERS = 3
NUM_HEADS = 4
CONTEXT_LENGTH = 256
MAX_NEW_TOKENS = 96

BATCH_SIZE = 16
BUCKET_BATCHES = 8  # batches are cut from runs of this many batches sorted by length
LEARNING_RATE = 3e-3
WARMUP_STEPS = 30
SCHEDULE_EPOCHS = 100  # length of the cosine schedule; the learning rate then stays at its floor
MAX_EPOCHS = 150  # give up after this many epochs
LOG_EVERY = 5  # epochs between progress lines
EVAL_EVERY = 5  # epochs between teacher-forced exactness checks once the schedule is over (every 20 before)
# Stop once every answer token is the arg-max with this much logit headroom over
# the runner-up. The margin keeps greedy answers stable under the tiny numeric
# differences between machines, thread counts and attention kernels.
MIN_LOGIT_MARGIN = 2.0
# The conversations `verify` checks are not the ones the stopping rule measures;
# their answers need some headroom too, or greedy decoding could flip elsewhere.
VERIFY_MIN_MARGIN = 0.5


@dataclass(frozen=True)
class QAPair:
    """One corpus entry."""

    id: str
    topic: str
    question: str
    answer: str


@dataclass(frozen=True)
class Conversation:
    """Ask ``pairs[target]``'s question, after an optional system prompt and earlier exchanges."""

    target: int
    history: tuple[int, ...] = ()  # corpus indices of the earlier exchanges, oldest first
    system: str | None = None

    def messages(self, pairs: Sequence[QAPair]) -> Messages:
        messages = [{"role": "system", "content": self.system}] if self.system is not None else []
        for j in self.history:
            messages += [
                {"role": "user", "content": pairs[j].question},
                {"role": "assistant", "content": pairs[j].answer},
            ]
        return messages + [{"role": "user", "content": pairs[self.target].question}]

    @property
    def kind(self) -> str:
        parts = (["system"] if self.system is not None else []) + (
            [f"history-{len(self.history)}"] if self.history else []
        )
        return "+".join(parts) or "bare"


@dataclass(frozen=True)
class Example:
    """A tokenized training example: prompt ids followed by answer ids + EOS."""

    input_ids: list[int]
    prompt_len: int


def set_determinism(seed: int) -> None:
    """Seed every RNG and make PyTorch pick deterministic kernels."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)


def load_corpus(path: Path = CORPUS_PATH) -> list[QAPair]:
    """Read the JSONL corpus into a list of `QAPair`."""
    with path.open(encoding="utf-8") as f:
        return [QAPair(**json.loads(line)) for line in f if line.strip()]


def train_tokenizer(arch: Arch, pairs: list[QAPair]) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the corpus and wrap it for transformers.

    The Qwen2 tokenizer uses Qwen2's own text pipeline (NFC normalization, Qwen2's
    pre-tokenization regex) and is a ``Qwen2Tokenizer``: that is the class
    ``AutoTokenizer`` loads for a Qwen2 checkpoint, and it rebuilds that pipeline
    around the saved vocabulary, so it must be the one the model is trained with.
    """
    tokenizer = Tokenizer(models.BPE())
    if arch.name == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        # Byte-level pre-tokenization: any UTF-8 text round-trips exactly, there is
        # no unknown token, and spaces are kept as part of the following word.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(arch.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [text for p in pairs for text in (p.question, p.answer)]
    tokenizer.train_from_iterator(texts, trainer=trainer)

    options = dict(
        bos_token=arch.bos_token,
        eos_token=arch.eos_token,
        pad_token=arch.pad_token,
        additional_special_tokens=list(arch.extra_special_tokens),
        chat_template=arch.chat_template,
        model_max_length=CONTEXT_LENGTH,
        # Never rewrite " ." -> "." etc. when decoding: answers must round-trip.
        clean_up_tokenization_spaces=False,
        padding_side="left",  # left padding is what batched generation needs
    )
    if arch.name == "qwen2":
        bpe = json.loads(tokenizer.to_str())["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
        return Qwen2Tokenizer(vocab=bpe["vocab"], merges=merges, unk_token=None, **options)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **options)


def render(tokenizer: PreTrainedTokenizerFast, messages: Messages) -> str:
    """Chat-format a conversation with the model's template, ending with the assistant header."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_prompt(tokenizer: PreTrainedTokenizerFast, question: str) -> str:
    """Chat-format a bare user question, ending with the assistant header."""
    return render(tokenizer, [{"role": "user", "content": question}])


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Encode text exactly as written (the template already adds BOS where there is one)."""
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def fit(
    tokenizer: PreTrainedTokenizerFast, pairs: list[QAPair], conv: Conversation
) -> tuple[Conversation, list[int]]:
    """``conv`` less the earlier exchanges that leave no room for the answer, and its prompt ids.

    Exchanges are dropped oldest first, as a chat client trims its history.
    """
    answer_len = len(encode(tokenizer, pairs[conv.target].answer)) + 1  # + EOS
    while True:
        prompt_ids = encode(tokenizer, render(tokenizer, conv.messages(pairs)))
        if len(prompt_ids) + answer_len <= CONTEXT_LENGTH:
            return conv, prompt_ids
        if not conv.history:
            raise ValueError(
                f"{pairs[conv.target].id}: {len(prompt_ids) + answer_len} tokens exceed "
                f"the context of {CONTEXT_LENGTH}"
            )
        conv = Conversation(conv.target, conv.history[1:], conv.system)


def make_example(tokenizer: PreTrainedTokenizerFast, pairs: list[QAPair], conv: Conversation) -> Example:
    """Tokenize prompt and answer separately, the way inference sees them (history fitted)."""
    _, prompt_ids = fit(tokenizer, pairs, conv)
    answer_ids = encode(tokenizer, pairs[conv.target].answer) + [tokenizer.eos_token_id]
    return Example(input_ids=prompt_ids + answer_ids, prompt_len=len(prompt_ids))


def random_conversation(rng: random.Random, pairs: list[QAPair], target: int) -> Conversation:
    """A system prompt (half of the time) and/or 1-2 earlier corpus exchanges.

    Half of the time the earlier exchanges are on the same topic as the last
    question (as in a real chat, and the harder case: similar questions).
    """
    system = rng.choice(SYSTEM_PROMPTS) if rng.random() < 0.5 else None
    num_history = rng.randint(0 if system is not None else 1, MAX_HISTORY)
    others = [j for j in range(len(pairs)) if j != target]
    same_topic = [j for j in others if pairs[j].topic == pairs[target].topic]
    pool = same_topic if rng.random() < 0.5 and len(same_topic) >= num_history else others
    return Conversation(target, tuple(rng.sample(pool, num_history)), system)


def training_conversations(rng: random.Random, pairs: list[QAPair]) -> list[Conversation]:
    """One epoch: every question asked bare (the case every notebook checks) and in one random conversation."""
    return [Conversation(i) for i in range(len(pairs))] + [
        random_conversation(rng, pairs, i) for i in range(len(pairs))
    ]


def eval_conversations(pairs: list[QAPair]) -> list[Conversation]:
    """A fixed sample for the stopping rule.

    Each question bare, after a system prompt, and in two random conversations.
    """
    rng = random.Random(SEED + 1)
    conversations = []
    for i in range(len(pairs)):
        conversations += [
            Conversation(i),
            Conversation(i, (), rng.choice(SYSTEM_PROMPTS)),
            random_conversation(rng, pairs, i),
            random_conversation(rng, pairs, i),
        ]
    return conversations


def verify_conversations(pairs: list[QAPair]) -> list[Conversation]:
    """A fixed sample that training never uses as such, for `verify` (besides every bare question).

    For question i: its neighbours in the corpus (i-1, i-2: mostly the same
    topic) as history, with and without a system prompt, and one random
    conversation of a separate seed.
    """
    rng = random.Random(SEED + 2)
    n, num_pairs = len(SYSTEM_PROMPTS), len(pairs)
    conversations = []
    for i in range(num_pairs):
        prev1, prev2 = (i - 1) % num_pairs, (i - 2) % num_pairs
        conversations += [
            Conversation(i, (), SYSTEM_PROMPTS[i % n]),
            Conversation(i, (prev1,)),
            Conversation(i, (prev2, prev1)),
            Conversation(i, (prev2, prev1), SYSTEM_PROMPTS[(i + 1) % n]),
            random_conversation(rng, pairs, i),
        ]
    return conversations


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; labels are -100 on prompt and padding positions."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        attention_mask[row, :n] = 1
        labels[row, e.prompt_len : n] = input_ids[row, e.prompt_len : n]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def build_model(arch: Arch, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """A small Llama or Qwen2 with tied input/output embeddings."""
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=arch.num_kv_heads,
        max_position_embeddings=CONTEXT_LENGTH,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch.name == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
        eos_ids: int | list[int] = tokenizer.eos_token_id
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=False))
        # Like a real Qwen chat model: stop at the end of the turn or of the text.
        eos_ids = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    model.generation_config = GenerationConfig(
        do_sample=False,  # greedy: the same question always gets the same answer
        max_new_tokens=MAX_NEW_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


@torch.no_grad()
def teacher_forced_margins(
    model: PreTrainedModel, examples: list[Example], pad_id: int, batch_size: int = 64
) -> list[float]:
    """For each example the smallest (target logit - best other logit) over its answer tokens.

    Greedy decoding reproduces an answer exactly iff, fed the correct prefix,
    the model ranks the correct next token first at every step, i.e. iff this
    margin is positive. Batched forward passes check many examples at once.
    """
    was_training = model.training
    model.eval()
    margins = [0.0] * len(examples)
    order = sorted(range(len(examples)), key=lambda k: len(examples[k].input_ids))  # little padding
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collate([examples[k] for k in rows], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits, targets = logits[:, :-1].float(), batch["labels"][:, 1:]
        mask = targets != -100
        safe_targets = targets.clamp(min=0)
        target_logit = logits.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
        others = logits.scatter(-1, safe_targets.unsqueeze(-1), float("-inf"))
        margin = (target_logit - others.max(dim=-1).values).masked_fill(~mask, float("inf"))
        for k, value in zip(rows, margin.min(dim=-1).values.tolist()):
            margins[k] = value
    model.train(was_training)
    return margins


def lr_at(step: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak learning rate."""
    if step < WARMUP_STEPS:
        return LEARNING_RATE * (step + 1) / WARMUP_STEPS
    progress = min(1.0, (step - WARMUP_STEPS) / max(1, total_steps - WARMUP_STEPS))
    return LEARNING_RATE * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def batches_by_length(rng: random.Random, examples: list[Example]) -> list[list[Example]]:
    """Shuffled batches of similar length (bare questions are much shorter than conversations)."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    batches = []
    run = BATCH_SIZE * BUCKET_BATCHES
    for start in range(0, len(order), run):
        chunk = sorted(order[start : start + run], key=lambda k: len(examples[k].input_ids))
        batches += [[examples[k] for k in chunk[i : i + BATCH_SIZE]] for i in range(0, len(chunk), BATCH_SIZE)]
    rng.shuffle(batches)
    return batches


def train(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, pairs: list[QAPair]
) -> tuple[int, float, float]:
    """Train until every answer is the greedy continuation with a safe margin.

    Each epoch asks every question bare and in one fresh random conversation
    (system prompt and/or earlier exchanges). The stopping rule, checked once
    the learning-rate schedule is over, covers every bare question and a fixed
    sample of conversations that is drawn separately.

    Returns (epochs run, last mean training loss, final margin).
    """
    pad_id = tokenizer.pad_token_id
    eval_examples = [make_example(tokenizer, pairs, c) for c in eval_conversations(pairs)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.98), weight_decay=0.0)
    steps_per_epoch = math.ceil(2 * len(pairs) / BATCH_SIZE)
    total_steps = SCHEDULE_EPOCHS * steps_per_epoch
    data_rng = random.Random(SEED)
    start = time.perf_counter()
    step, epoch_loss, margin = 0, float("nan"), float("-inf")
    model.train()
    for epoch in range(1, MAX_EPOCHS + 1):
        examples = [make_example(tokenizer, pairs, c) for c in training_conversations(data_rng, pairs)]
        losses = []
        for batch_examples in batches_by_length(data_rng, examples):
            batch = collate(batch_examples, pad_id)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps)
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
        epoch_loss = sum(losses) / len(losses)
        # Training stops only once the learning rate has decayed (answers checked
        # earlier, at a high learning rate, flip back and forth between epochs).
        schedule_over = epoch >= SCHEDULE_EPOCHS
        if epoch % (EVAL_EVERY if schedule_over else 4 * EVAL_EVERY) == 0:
            margins = teacher_forced_margins(model, eval_examples, pad_id)
            margin = min(margins)
            progress = f"min margin {margin:+6.2f}  wrong {sum(m <= 0 for m in margins):3d}/{len(margins)}"
        elif epoch % LOG_EVERY == 0:
            progress = ""
        else:
            continue
        elapsed = time.perf_counter() - start
        print(f"epoch {epoch:4d}  loss {epoch_loss:.4f}  {progress:33s}  {elapsed:5.1f}s", flush=True)
        if progress and schedule_over and margin >= MIN_LOGIT_MARGIN:
            return epoch, epoch_loss, margin
    raise SystemExit(
        f"Training ran all {MAX_EPOCHS} epochs without memorizing every answer "
        f"(min margin {margin:+.2f}, needed {MIN_LOGIT_MARGIN})."
    )


@torch.no_grad()
def generate_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, prompts: list[Messages], batch_size: int = 32
) -> list[str]:
    """Greedy answers for conversations, batched with left padding."""
    model.eval()
    answers: list[str] = []
    for i in range(0, len(prompts), batch_size):
        texts = [render(tokenizer, messages) for messages in prompts[i : i + batch_size]]
        enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        out = model.generate(**enc, generation_config=model.generation_config)
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        answers += [a.strip() for a in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers


def verify(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, pairs: list[QAPair]) -> tuple[int, float]:
    """Fail loudly unless greedy decoding reproduces every checked answer exactly.

    Checked: every corpus question asked bare, batched (left-padded, as the
    test-suite does it) and one at a time (as a notebook does it); and a fixed
    sample of conversations with earlier exchanges and/or a system message
    (`verify_conversations`), batched, plus a deterministic subset of them one
    at a time. Returns (number of prompts checked, their min teacher-forced margin).
    """
    # Decoding a model this small is fastest on one thread (and the check then
    # also covers a thread count different from training's).
    torch.set_num_threads(1)
    conversations = [Conversation(i) for i in range(len(pairs))]
    conversations += [fit(tokenizer, pairs, c)[0] for c in verify_conversations(pairs)]
    prompts = [c.messages(pairs) for c in conversations]
    batched = generate_answers(model, tokenizer, prompts)
    # One at a time: every bare question and every 8th conversation.
    single_idx = list(range(len(pairs))) + list(range(len(pairs), len(conversations), 8))
    single = {k: generate_answers(model, tokenizer, [prompts[k]])[0] for k in single_idx}
    wrong = []
    for k, (conv, b) in enumerate(zip(conversations, batched)):
        want = pairs[conv.target].answer
        s = single.get(k, want)
        if not (b == s == want):
            wrong.append((conv, want, b, s))
    for conv, want, b, s in wrong:
        print(
            f"MISMATCH {pairs[conv.target].id} ({conv.kind}, history {list(conv.history)}, "
            f"system {conv.system!r})\n  want:    {want}\n  batched: {b}\n  single:  {s}",
            file=sys.stderr,
        )
    if wrong:
        raise SystemExit(f"{len(wrong)} of {len(prompts)} answers are not reproduced word for word.")
    examples = [make_example(tokenizer, pairs, c) for c in conversations]
    margin = min(teacher_forced_margins(model, examples, tokenizer.pad_token_id))
    kinds = sorted({c.kind for c in conversations})
    print(f"verified {len(prompts)} prompts ({', '.join(kinds)}), {len(single)} of them also one at a time; "
          f"min teacher-forced margin {margin:+.2f}")
    if margin < VERIFY_MIN_MARGIN:
        raise SystemExit(
            f"The answers are reproduced, but with a min margin of {margin:+.2f} < {VERIFY_MIN_MARGIN}."
        )
    return len(prompts), margin


README_TEMPLATE = """\
# {model_name}: a sub-million-parameter Ray Serve Q&A model

A deliberately tiny chat model the notebooks of this series can serve with Ray
Serve without downloading anything. It is a `{model_class}` with
**{num_params:,} parameters** ({size_kib:,} KiB of float32 safetensors) trained from scratch
on `assets/serve_qa.jsonl` ({num_pairs} Ray Serve questions with short answers
written for this project). Greedy decoding reproduces every corpus answer word
for word; anything else gets fluent-looking but unreliable Ray Serve text.
Treat it as a stand-in for a real LLM, not as a source of truth.
{intro}
- architecture: {title}, {layers} layers, hidden size {hidden}, {heads} attention heads
  ({kv_heads} key/value heads), MLP size {intermediate}, tied input/output embeddings,
  context {context} tokens
- tokenizer: byte-level BPE trained on the corpus, {vocab} tokens
- special tokens: {special_tokens}
- generation defaults (`generation_config.json`): greedy (`do_sample=False`),
  `max_new_tokens={max_new_tokens}`, stops at {stop_tokens}
- training: AdamW, {epochs} epochs, loss on the tokens of the final answer only,
  final training loss {loss:.1e}

The model answers the **last user question** of a conversation. Each question
was trained asked alone, after a system message, after up to two earlier
user/assistant exchanges from the corpus (the corpus answers as the assistant
turns), and after both; earlier exchanges that did not fit in the context
together with the answer were left out. The system messages come from this
fixed set of typical system prompts:

{system_prompts}

Greedy decoding was verified to give the exact corpus answer for every question
asked alone and in {num_verified} conversations of those kinds that training never
saw as such. Other histories (turns that are not from the corpus, more than two
earlier exchanges) and other system prompts usually work but are not guaranteed.

Prompt format, as rendered by `tokenizer.apply_chat_template(messages,
tokenize=False, add_generation_prompt=True)`, for a system message and a question:

```
{example}
```

Usage:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("assets/{model_name}")
model = AutoModelForCausalLM.from_pretrained("assets/{model_name}")
prompt = tokenizer.apply_chat_template(
    [{{"role": "user", "content": "What does the Serve controller do?"}}],
    tokenize=False, add_generation_prompt=True,
)
inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
output = model.generate(**inputs)  # greedy, up to {max_new_tokens} new tokens
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

Rebuild (deterministic, a few minutes on 2 CPU cores):

```
python scripts/train_tiny_chat.py{arch_flag}
```

(`--arch llama`, the default, builds `assets/tiny-chat`; `--arch qwen2` builds
`assets/tiny-chat-qwen2`, the same corpus and recipe with a Qwen2 model and a ChatML template.)
"""

LLAMA_INTRO = ""
QWEN2_INTRO = """
It is the series' second checkpoint: the same corpus, training recipe and answers
as `tiny-chat` (a Llama), but a different architecture and a ChatML chat template
like real Qwen models (`<|im_start|>{role}\\n...<|im_end|>\\n` per message, no BOS
token, no default system prompt). Use it to check that serving code works with
any checkpoint: point `SERVE_CHAT_MODEL` at this folder.
"""


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Write model, tokenizer and generation config to `out_dir` with ``save_pretrained``."""
    model.save_pretrained(out_dir)  # model.safetensors + config.json + generation_config.json
    # Save no padding state left over from the last batched call (padding_side is in tokenizer_config.json).
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.save_pretrained(out_dir)  # tokenizer.json + tokenizer_config.json + chat_template.jinja
    # safetensors writes the weights with mode 0600; make them readable like the rest.
    (out_dir / "model.safetensors").chmod(0o644)


def load_checkpoint(path: Path) -> tuple[PreTrainedTokenizerFast, PreTrainedModel]:
    """(tokenizer, model) as a user gets them: the Auto classes, from disk only."""
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    return tokenizer, model.eval()


def check_reloaded(
    trained: PreTrainedTokenizerFast, reloaded: PreTrainedTokenizerFast, pairs: list[QAPair]
) -> None:
    """Fail loudly unless the saved tokenizer tokenizes like the one the model was trained with."""
    conversations = [Conversation(i) for i in range(len(pairs))] + verify_conversations(pairs)
    texts = [p.answer for p in pairs] + [render(trained, c.messages(pairs)) for c in conversations]
    differ = [t for t in texts if encode(trained, t) != encode(reloaded, t)]
    if differ or render(reloaded, conversations[-1].messages(pairs)) != texts[-1]:
        raise SystemExit(
            f"The saved tokenizer ({type(reloaded).__name__}) differs from the trained one "
            f"({type(trained).__name__}) on {len(differ)} of {len(texts)} texts, e.g. {differ[:1]}"
        )


def write_readme(
    arch: Arch,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    out_dir: Path,
    num_pairs: int,
    epochs: int,
    loss: float,
    num_verified: int,
) -> None:
    """Write the checkpoint's README.md (its model card) to `out_dir`."""
    size_kib = (out_dir / "model.safetensors").stat().st_size // 1024
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    stop_tokens = " or ".join(f"`{tokenizer.convert_ids_to_tokens(i)}`" for i in eos)
    example = render(
        tokenizer,
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What does the Serve controller do?"},
        ],
    ).rstrip("\n")
    readme = README_TEMPLATE.format(
        model_name=arch.model_name,
        model_class=type(model).__name__,
        intro=QWEN2_INTRO if arch.name == "qwen2" else LLAMA_INTRO,
        title=arch.title,
        num_params=model.num_parameters(),
        size_kib=size_kib,
        num_pairs=num_pairs,
        layers=NUM_LAYERS,
        hidden=HIDDEN_SIZE,
        heads=NUM_HEADS,
        kv_heads=arch.num_kv_heads,
        intermediate=INTERMEDIATE_SIZE,
        context=CONTEXT_LENGTH,
        vocab=len(tokenizer),
        special_tokens=arch.special_tokens_doc,
        stop_tokens=stop_tokens,
        max_new_tokens=MAX_NEW_TOKENS,
        epochs=epochs,
        loss=loss,
        system_prompts="\n".join(f"- {s}" for s in SYSTEM_PROMPTS),
        num_verified=num_verified - num_pairs,
        example=example,
        arch_flag="" if arch.name == "llama" else f" --arch {arch.name}",
    )
    (out_dir / "README.md").write_text(readme, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--arch", choices=sorted(ARCHS), default="llama",
        help="llama: assets/tiny-chat (default); qwen2: assets/tiny-chat-qwen2 (ChatML template)",
    )
    parser.add_argument("--output-dir", type=Path, help="where to save (default: assets/<model name>)")
    args = parser.parse_args()
    arch = ARCHS[args.arch]
    out_dir = args.output_dir or arch.output_dir

    started = time.perf_counter()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in the log
    set_determinism(SEED)
    pairs = load_corpus()
    tokenizer = train_tokenizer(arch, pairs)
    bare = [make_example(tokenizer, pairs, Conversation(i)) for i in range(len(pairs))]
    lengths = [len(e.input_ids) for e in bare]
    print(
        f"{arch.model_name}: {len(pairs)} pairs, vocab {len(tokenizer)}, "
        f"tokens per bare example max {max(lengths)} / mean {sum(lengths) / len(lengths):.0f}"
    )

    model = build_model(arch, tokenizer)
    print(f"{type(model).__name__}, {model.num_parameters():,} parameters")
    epochs, loss, margin = train(model, tokenizer, pairs)
    trained = time.perf_counter()
    print(f"trained in {trained - started:.0f}s")

    # Save next to the destination, then verify the checkpoint as a user loads it
    # (Auto classes, from disk); it replaces `out_dir` only once it has passed.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        save_checkpoint(model, tokenizer, staging)
        shipped_tokenizer, shipped_model = load_checkpoint(staging)
        check_reloaded(tokenizer, shipped_tokenizer, pairs)
        num_verified, _ = verify(shipped_model, shipped_tokenizer, pairs)
        write_readme(arch, shipped_model, shipped_tokenizer, staging, len(pairs), epochs, loss, num_verified)
        staging.chmod(0o755)  # mkdtemp makes it private
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(
        f"all {num_verified} checked answers reproduced (training min margin {margin:+.2f}); saved to {out_dir} "
        f"in {time.perf_counter() - started:.0f}s (verification {time.perf_counter() - trained:.0f}s)"
    )

if __name__ == "__main__":
    main()
