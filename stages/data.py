"""Datasets: Dolly (instruction/context/response) and chat-messages JSONL, validated row by row, formatted
with real newlines (stages.md defect 19), split deterministically, tokenized with packing or padding."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from stages.common import StageError, log

DOLLY_FIELDS = ("instruction", "response")


@dataclass(frozen=True)
class Example:
    prompt: str  # what the model is given
    answer: str  # what it should produce

    @property
    def text(self) -> str:
        return self.prompt + self.answer


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise StageError(f"{path}: no such data file")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StageError(f"{path}:{number}: malformed JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise StageError(f"{path}:{number}: a row must be a JSON object")
            rows.append((number, row))
    if not rows:
        raise StageError(f"{path}: the file is empty", "a dataset needs at least one row")
    return [_checked(path, n, r) for n, r in rows]


def _checked(path: Path, number: int, row: dict[str, Any]) -> dict[str, Any]:
    row["_line"] = number
    return row


def validate(path: Path, rows: list[dict[str, Any]], fmt: str) -> None:
    for row in rows:
        where = f"{path}:{row['_line']}"
        if fmt == "dolly":
            for field in DOLLY_FIELDS:
                if field not in row:
                    raise StageError(f"{where}: missing column {field!r}")
            for field in ("instruction", "context", "response"):
                if field in row and row[field] is not None and not isinstance(row[field], str):
                    raise StageError(f"{where}: column {field!r} must be a string, not {type(row[field]).__name__}")
        else:
            messages = row.get("messages")
            if not isinstance(messages, list) or not messages:
                raise StageError(f"{where}: missing column 'messages' (a non-empty list)")
            for message in messages:
                if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                        or message.get("role") not in ("system", "user", "assistant"):
                    raise StageError(f"{where}: each message needs role system|user|assistant and string content")
            if messages[-1]["role"] != "assistant":
                raise StageError(f"{where}: the last message must be the assistant's answer")


def dolly_prompt(instruction: str, context: str | None = None) -> str:
    parts = [f"### Instruction:\n{instruction}"]
    if context:
        parts.append(f"### Context:\n{context}")
    parts.append("### Answer:\n")
    return "\n\n".join(parts)


# Gen 2 upstream (awsome-distributed-training 3.test_cases/pytorch/optimum-neuron/llama3/slurm/fine-tuning,
# src/train.py): each Dolly row becomes system / user / assistant messages, the context appended to the user
# turn, rendered with the tokenizer's chat template. The one Dolly formatter of the project (hf and neuron).
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


def dolly_messages(row: dict[str, Any], system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[dict[str, str]]:
    user = row["instruction"]
    if row.get("context"):
        user = f"{user}\n\nContext: {row['context']}"  # upstream's exact text: `+= f"\n\nContext: {...}"`
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": row["response"]}]


def chat_example(messages: list[dict[str, str]], tokenizer: Any) -> Example:
    """The prompt is the template up to the assistant's turn; the answer is the rest of the rendered conversation,
    so it ends the way the template ends a turn (SmolLM2: `<|im_end|>\n`), not with a guessed EOS token."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if full.startswith(prompt) and len(full) > len(prompt):
        return Example(prompt, full[len(prompt):])
    return Example(prompt, messages[-1]["content"] + (tokenizer.eos_token or ""))


def to_examples(rows: list[dict[str, Any]], fmt: str, tokenizer: Any) -> list[Example]:
    if fmt == "dolly" and not getattr(tokenizer, "chat_template", None):
        eos = tokenizer.eos_token or ""
        return [Example(dolly_prompt(r["instruction"], r.get("context")), r["response"] + eos) for r in rows]
    # A tokenizer with a chat template gets Dolly rows as Gen 2 upstream trains on them: system + user + assistant.
    return [chat_example(dolly_messages(r) if fmt == "dolly" else r["messages"], tokenizer) for r in rows]


T = TypeVar("T")


def split(examples: list[T], eval_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """The one train/held-out split of the project: Examples here, raw rows in nxd-data, the same indices."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(examples) * eval_fraction))) if len(examples) > 1 else 0
    eval_idx = set(order[:n_eval])
    train = [e for i, e in enumerate(examples) if i not in eval_idx]
    return train, [e for i, e in enumerate(examples) if i in eval_idx]


def load(path: Path, fmt: str, tokenizer: Any, eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    rows = read_jsonl(path)
    validate(path, rows, fmt)
    train, held_out = split(to_examples(rows, fmt, tokenizer), eval_fraction, seed)
    if not train:
        raise StageError(f"{path}: no training rows left after holding out {eval_fraction:.0%} for evaluation")
    log("sample:\n" + train[0].text)
    return train, held_out


# One training sequence: token ids and their labels (-100 where no loss is taken).
Chunk = tuple[list[int], list[int]]


def tokens(example: Example, tokenizer: Any) -> Chunk:
    """The example's ids, labelled on the answer only: the loss is the one evaluate measures (the answer given
    the prompt), and a fixed system prompt repeated in every row teaches nothing (TRL's SFTTrainer does the same
    for prompt/completion data: completion_only_loss)."""
    prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(example.text, add_special_tokens=False)["input_ids"]
    n = len(prompt) if ids[:len(prompt)] == prompt else 0
    return ids, [-100] * n + ids[n:]


def pack(examples: list[Example], tokenizer: Any, seq_len: int) -> list[Chunk]:
    """Concatenate all examples and cut the stream into seq_len chunks (the real packed length: defect 19);
    a chunk without a single answer token is dropped (its loss would be 0/0)."""
    ids: list[int] = []
    labels: list[int] = []
    for example in examples:
        chunk_ids, chunk_labels = tokens(example, tokenizer)
        ids.extend(chunk_ids)
        labels.extend(chunk_labels)
    chunks = [(ids[i:i + seq_len], labels[i:i + seq_len]) for i in range(0, len(ids) - seq_len + 1, seq_len)]
    if not chunks and ids:
        chunks = [(ids, labels)]
    return [c for c in chunks if any(label != -100 for label in c[1])]


def pad(examples: list[Example], tokenizer: Any, seq_len: int) -> list[Chunk]:
    chunks = [tokens(e, tokenizer) for e in examples]
    return [(ids[:seq_len], labels[:seq_len]) for ids, labels in chunks if any(x != -100 for x in labels[:seq_len])]

