"""The finetune stage's answer-only LM head (stages/answer_head.py answer_loss): on a real tiny Llama (LoRA and full
fine-tuning), the loss and every trainable gradient equal what transformers' own path gives - model(**batch).loss,
which computes the logits of every position and takes the loss on the labelled ones (transformers 4.57
loss/loss_utils.py ForCausalLMLoss) - while the head multiplies only the labelled rows."""

from __future__ import annotations

from typing import Any

import pytest

from tests.stages.conftest import DATA


def batch_and_model(tiny: Any, method: str) -> tuple[Any, dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages import data as datalib
    from stages.batches import collate

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    train, _ = datalib.load(DATA, "dolly", tokenizer, 0.1, 42)
    # Unpacked rows of different lengths: padding (and its attention mask) is in the batch too.
    chunks = datalib.pad(train[:3], tokenizer, 96)
    assert len({len(ids) for ids, _ in chunks}) > 1
    batch = collate(chunks, tokenizer.pad_token_id or 0, torch.device("cpu"))
    model: Any = AutoModelForCausalLM.from_pretrained(tiny, torch_dtype=torch.float32)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                 target_modules=["q_proj", "v_proj", "down_proj"]))
        with torch.no_grad():  # B starts at zero; random B makes the LoRA gradients of A non-trivial too
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.05)
    model.train()
    return model, batch


def loss_and_grads(model: Any, compute: Any) -> tuple[float, dict[str, Any]]:
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return float(loss.detach()), grads


@pytest.mark.parametrize("method", ["lora", "full"])
def test_answer_head_gives_the_loss_and_gradients_of_the_full_head(tiny, method):
    from stages.answer_head import answer_loss, answer_targets

    model, batch = batch_and_model(tiny, method)
    head = model.get_output_embeddings()
    rows: list[tuple[int, ...]] = []
    hook = head.register_forward_hook(lambda _m, _args, out: rows.append(tuple(out.shape)))
    full_loss, full_grads = loss_and_grads(model, lambda: model(**batch).loss)
    ours_loss, ours_grads = loss_and_grads(model, lambda: answer_loss(model, head, batch))
    hook.remove()

    keep, targets = answer_targets(batch["labels"])
    n, (b, t) = int(keep.sum()), batch["labels"].shape
    vocab = model.config.vocab_size
    assert rows == [(b, t, vocab), (n, vocab)] and 0 < n < b * t // 2  # the head ran on the labelled rows only
    assert targets.shape == (n,) and bool((targets != -100).all())
    assert ours_loss == pytest.approx(full_loss, rel=1e-5)
    assert sorted(ours_grads) == sorted(full_grads) and len(full_grads) > 0
    if method == "lora":
        assert all("lora_" in name for name in full_grads)
    else:
        assert any("embed_tokens" in name or "lm_head" in name for name in full_grads)
    for name, grad in full_grads.items():
        scale = float(grad.abs().max()) or 1.0
        assert float((ours_grads[name] - grad).abs().max()) <= 1e-4 * scale, name


def test_a_model_that_bypasses_its_head_module_gets_the_same_loss(tiny):
    """The fallback: if the model never calls the module answer_loss hooks (here a module outside the model),
    the logits come back for every position and are indexed instead."""
    import torch

    from stages.answer_head import answer_loss

    model, batch = batch_and_model(tiny, "lora")
    with torch.no_grad():
        full = float(model(**batch).loss)
        ours = float(answer_loss(model, torch.nn.Identity(), batch))
    assert ours == pytest.approx(full, rel=1e-5)
