#!/usr/bin/env python
"""Train the tiny chat model that ships with this series in ``assets/tiny-chat/``.

The notebooks need a *real* Hugging Face causal language model to serve (load it
with ``AutoModelForCausalLM``, call ``generate``, stream tokens, batch requests)
without downloading anything from a model hub. This script builds one from
scratch in a couple of minutes on a laptop CPU:

1. It reads the question/answer corpus ``assets/serve_qa.jsonl`` (Ray Serve
   questions with short answers, written for this project).
2. It trains a small byte-level BPE tokenizer on that corpus with the
   ``tokenizers`` library and wraps it as a ``PreTrainedTokenizerFast`` with
   chat special tokens and a Jinja ``chat_template``.
3. It builds a ``LlamaForCausalLM`` with well under one million parameters and
   trains it to answer every corpus question word for word (loss only on the
   answer tokens).
4. It checks, with greedy ``generate``, that every question gets its exact
   answer, fails loudly if not, and saves model + tokenizer + generation config
   with ``save_pretrained`` (safetensors).

The model is a memorizer, not a general chatbot: it answers the corpus
questions exactly and produces plausible-looking Ray Serve text for anything
else. That is all the serving notebooks need.

Everything is deterministic (fixed seeds, ``torch.use_deterministic_algorithms``,
two CPU threads), so re-running the script on the same machine reproduces the
same weights. Rebuild with::

    python scripts/train_tiny_chat.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Run the Rust tokenizer library single-threaded (one less source of
# nondeterminism, and no fork warning); must be set before it is imported.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS_PATH = REPO_ROOT / "assets" / "serve_qa.jsonl"
OUTPUT_DIR = REPO_ROOT / "assets" / "tiny-chat"

SEED = 1234
NUM_THREADS = 2

# ---------------------------------------------------------------------------
# Tokenizer and chat format
# ---------------------------------------------------------------------------
VOCAB_SIZE = 768  # includes the 256 byte symbols and the special tokens
PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|begin|>"
EOS_TOKEN = "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# Order fixes the ids: <|pad|>=0, <|begin|>=1, <|end|>=2, <|system|>=3, ...
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *ROLE_TOKENS]

# A conversation renders as
#   <|begin|><|system|>\n{system}<|end|>\n<|user|>\n{question}<|end|>\n<|assistant|>\n
# and the assistant's reply is "{answer}<|end|>". `<|end|>` is the EOS token, so
# generation stops at the end of the answer.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Only system, user and assistant roles are supported.') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + (message['content'] | trim) + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

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
LEARNING_RATE = 3e-3
WARMUP_STEPS = 30
MAX_EPOCHS = 160  # length of the cosine schedule; training usually stops earlier
EVAL_EVERY = 5  # epochs between teacher-forced exactness checks
# Stop once every answer token is the arg-max with this much logit headroom over
# the runner-up. The margin keeps greedy answers stable under the tiny numeric
# differences between machines, thread counts and attention kernels.
MIN_LOGIT_MARGIN = 2.0


@dataclass(frozen=True)
class QAPair:
    """One corpus entry."""

    id: str
    topic: str
    question: str
    answer: str


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


def train_tokenizer(pairs: list[QAPair]) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the corpus and wrap it for transformers."""
    tokenizer = Tokenizer(models.BPE())
    # Byte-level pre-tokenization: any UTF-8 text round-trips exactly, there is
    # no unknown token, and spaces are kept as part of the following word.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [text for p in pairs for text in (p.question, p.answer)]
    tokenizer.train_from_iterator(texts, trainer=trainer)

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=CONTEXT_LENGTH,
        # Never rewrite " ." -> "." etc. when decoding: answers must round-trip.
        clean_up_tokenization_spaces=False,
        padding_side="left",  # left padding is what batched generation needs
    )


def render_prompt(tokenizer: PreTrainedTokenizerFast, question: str) -> str:
    """Chat-format a bare user question, ending with the assistant header."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        tokenize=False,
        add_generation_prompt=True,
    )


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Encode text exactly as written (the template already adds BOS)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def build_examples(tokenizer: PreTrainedTokenizerFast, pairs: list[QAPair]) -> list[Example]:
    """Tokenize prompt and answer separately, the way inference sees them."""
    examples = []
    for p in pairs:
        prompt_ids = encode(tokenizer, render_prompt(tokenizer, p.question))
        answer_ids = encode(tokenizer, p.answer) + [tokenizer.eos_token_id]
        ids = prompt_ids + answer_ids
        if len(ids) > CONTEXT_LENGTH:
            raise ValueError(f"{p.id}: {len(ids)} tokens exceed the context of {CONTEXT_LENGTH}")
        examples.append(Example(input_ids=ids, prompt_len=len(prompt_ids)))
    return examples


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


def build_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A small Llama with tied input/output embeddings."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        max_position_embeddings=CONTEXT_LENGTH,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        do_sample=False,  # greedy: the same question always gets the same answer
        max_new_tokens=MAX_NEW_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


@torch.no_grad()
def teacher_forced_margin(model: LlamaForCausalLM, examples: list[Example], pad_id: int) -> float:
    """Smallest (target logit - best other logit) over every answer token.

    Greedy decoding reproduces an answer exactly iff, fed the correct prefix,
    the model ranks the correct next token first at every step, i.e. iff this
    margin is positive. One batched forward pass checks the whole corpus.
    """
    model.eval()
    batch = collate(examples, pad_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, targets = logits[:, :-1].float(), batch["labels"][:, 1:]
    mask = targets != -100
    safe_targets = targets.clamp(min=0)
    target_logit = logits.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, safe_targets.unsqueeze(-1), float("-inf"))
    margin = target_logit - others.max(dim=-1).values
    model.train()
    return margin[mask].min().item()


def lr_at(step: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak learning rate."""
    if step < WARMUP_STEPS:
        return LEARNING_RATE * (step + 1) / WARMUP_STEPS
    progress = min(1.0, (step - WARMUP_STEPS) / max(1, total_steps - WARMUP_STEPS))
    return LEARNING_RATE * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(model: LlamaForCausalLM, examples: list[Example], pad_id: int) -> tuple[int, float, float]:
    """Train until every answer is the greedy continuation with a safe margin.

    Returns (epochs run, last mean training loss, final margin).
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.98), weight_decay=0.0)
    steps_per_epoch = math.ceil(len(examples) / BATCH_SIZE)
    total_steps = MAX_EPOCHS * steps_per_epoch
    order_rng = random.Random(SEED)
    start = time.perf_counter()
    step, epoch_loss, margin = 0, float("nan"), float("-inf")
    model.train()
    for epoch in range(1, MAX_EPOCHS + 1):
        order = list(range(len(examples)))
        order_rng.shuffle(order)
        losses = []
        for i in range(0, len(order), BATCH_SIZE):
            batch = collate([examples[j] for j in order[i : i + BATCH_SIZE]], pad_id)
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
        if epoch % EVAL_EVERY == 0:
            margin = teacher_forced_margin(model, examples, pad_id)
            elapsed = time.perf_counter() - start
            print(f"epoch {epoch:4d}  loss {epoch_loss:.4f}  min margin {margin:+6.2f}  {elapsed:5.1f}s", flush=True)
            if margin >= MIN_LOGIT_MARGIN:
                return epoch, epoch_loss, margin
    raise SystemExit(
        f"Training ran all {MAX_EPOCHS} epochs without memorizing every answer "
        f"(min margin {margin:+.2f}, needed {MIN_LOGIT_MARGIN})."
    )


@torch.no_grad()
def generate_answers(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, questions: list[str], batch_size: int = 32
) -> list[str]:
    """Greedy answers for bare user questions, batched with left padding."""
    model.eval()
    answers: list[str] = []
    for i in range(0, len(questions), batch_size):
        prompts = [render_prompt(tokenizer, q) for q in questions[i : i + batch_size]]
        enc = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        out = model.generate(**enc, generation_config=model.generation_config)
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        answers += [a.strip() for a in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers


def verify(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, pairs: list[QAPair]) -> None:
    """Fail loudly unless greedy decoding reproduces every answer exactly."""
    # Decoding a model this small is fastest on one thread (and the check then
    # also covers a thread count different from training's).
    torch.set_num_threads(1)
    # Batched (left-padded) generation, as the test-suite does it ...
    batched = generate_answers(model, tokenizer, [p.question for p in pairs])
    # ... and one question at a time, as a notebook does it.
    single = [generate_answers(model, tokenizer, [p.question])[0] for p in pairs]
    wrong = [(p, b, s) for p, b, s in zip(pairs, batched, single) if not (b == s == p.answer)]
    for p, b, s in wrong:
        print(f"MISMATCH {p.id}\n  want:    {p.answer}\n  batched: {b}\n  single:  {s}", file=sys.stderr)
    if wrong:
        raise SystemExit(f"{len(wrong)} of {len(pairs)} answers are not reproduced word for word.")
    # A system message must render too (the model was never trained on one).
    tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "You are a helpful Ray Serve tutor."},
            {"role": "user", "content": pairs[0].question},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )


README_TEMPLATE = """\
# tiny-chat: a sub-million-parameter Ray Serve Q&A model

A deliberately tiny chat model the notebooks of this series can serve with Ray
Serve without downloading anything. It is a `LlamaForCausalLM` with
**{num_params:,} parameters** ({size_kib:,} KiB of float32 safetensors) trained from scratch
on `assets/serve_qa.jsonl` ({num_pairs} Ray Serve questions with short answers
written for this project). Greedy decoding reproduces every corpus answer word
for word; anything else gets fluent-looking but unreliable Ray Serve text.
Treat it as a stand-in for a real LLM, not as a source of truth.

- architecture: Llama, {layers} layers, hidden size {hidden}, {heads} attention heads,
  MLP size {intermediate}, tied input/output embeddings, context {context} tokens
- tokenizer: byte-level BPE trained on the corpus, {vocab} tokens
- special tokens: `{bos}` (BOS), `{eos}` (EOS, closes every turn), `{pad}`
  (padding), and the role markers `{roles}`
- generation defaults (`generation_config.json`): greedy (`do_sample=False`),
  `max_new_tokens={max_new_tokens}`
- training: AdamW, {epochs} epochs, loss on the answer tokens only, final
  training loss {loss:.4f}

Prompt format, as rendered by `tokenizer.apply_chat_template(messages,
tokenize=False, add_generation_prompt=True)`. A system message is accepted by
the template, but the model was trained on a single bare user turn: send just
the question to get the exact corpus answer.

```
{bos}<|system|>
You are a helpful tutor.{eos}
<|user|>
What does the Serve controller do?{eos}
<|assistant|>
```

Usage:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("assets/tiny-chat")
model = AutoModelForCausalLM.from_pretrained("assets/tiny-chat")
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
python scripts/train_tiny_chat.py
```
"""


def save(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    out_dir: Path,
    num_pairs: int,
    epochs: int,
    loss: float,
) -> None:
    """Write model, tokenizer, generation config and README to `out_dir`."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir)  # model.safetensors + config.json + generation_config.json
    tokenizer.save_pretrained(out_dir)  # tokenizer.json + tokenizer_config.json + chat_template.jinja
    # safetensors writes the weights with mode 0600; make them readable like the rest.
    (out_dir / "model.safetensors").chmod(0o644)
    size_kib = (out_dir / "model.safetensors").stat().st_size // 1024
    readme = README_TEMPLATE.format(
        num_params=model.num_parameters(),
        size_kib=size_kib,
        num_pairs=num_pairs,
        layers=NUM_LAYERS,
        hidden=HIDDEN_SIZE,
        heads=NUM_HEADS,
        intermediate=INTERMEDIATE_SIZE,
        context=CONTEXT_LENGTH,
        vocab=len(tokenizer),
        bos=BOS_TOKEN,
        eos=EOS_TOKEN,
        pad=PAD_TOKEN,
        roles="`, `".join(ROLE_TOKENS),
        max_new_tokens=MAX_NEW_TOKENS,
        epochs=epochs,
        loss=loss,
    )
    (out_dir / "README.md").write_text(readme, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR, help="where to save (default: %(default)s)")
    args = parser.parse_args()

    started = time.perf_counter()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in the log
    set_determinism(SEED)
    pairs = load_corpus()
    tokenizer = train_tokenizer(pairs)
    examples = build_examples(tokenizer, pairs)
    lengths = [len(e.input_ids) for e in examples]
    print(
        f"{len(pairs)} pairs, vocab {len(tokenizer)}, "
        f"tokens per example max {max(lengths)} / mean {sum(lengths) / len(lengths):.0f}"
    )

    model = build_model(tokenizer)
    print(f"{model.num_parameters():,} parameters")
    epochs, loss, margin = train(model, examples, tokenizer.pad_token_id)
    verify(model, tokenizer, pairs)
    save(model, tokenizer, args.output_dir, len(pairs), epochs, loss)
    print(f"all {len(pairs)} answers reproduced (min margin {margin:+.2f}); saved to {args.output_dir} "
          f"in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
