"""make-tiny: a small Llama-architecture model and a byte-level BPE tokenizer trained on the dataset's own
text, so the whole chain runs offline (no model can be downloaded here)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stages.common import StageError, entry, log, write_manifest

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% if m['role'] == 'assistant' %}</s>{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def corpus(dataset: Path) -> list[str]:
    texts: list[str] = []
    for line in dataset.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            texts.extend(str(v) for k, v in row.items() if isinstance(v, str))
            for message in row.get("messages", []) if isinstance(row.get("messages"), list) else []:
                texts.append(str(message.get("content", "")))
    texts += ["### Instruction:\n", "### Context:\n", "### Answer:\n", "<|system|>", "<|user|>", "<|assistant|>"]
    return texts


def build(dataset: Path, output: Path, vocab_size: int = 512, hidden: int = 128, layers: int = 2,
          seed: int = 0) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if not dataset.is_file():
        raise StageError(f"{dataset}: no such dataset (the tiny tokenizer is trained on it)")
    torch.manual_seed(seed)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus(dataset), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", model_max_length=1024,
                                        model_input_names=["input_ids", "attention_mask"])
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    log(f"tiny llama: {sum(p.numel() for p in model.parameters()):,} parameters, vocab {len(tokenizer)} -> {output}")


@entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages make-tiny")
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build(args.dataset, args.output, args.vocab_size, args.hidden, args.layers, args.seed)
    write_manifest(args.output)
    return 0
