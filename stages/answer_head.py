"""The finetune stage's answer-position LM head: the loss over the labelled (answer) tokens with the LM head
applied only where a label is, instead of at every position (stages/finetune.py's training step calls it).
"""

from __future__ import annotations

from typing import Any


def answer_targets(labels: Any) -> tuple[Any, Any]:
    """The positions whose next token carries a label, and those labels: the causal shift of transformers'
    ForCausalLMLoss (transformers 4.57 loss/loss_utils.py: labels padded with one -100, then labels[..., 1:])."""
    import torch

    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    keep = shifted != -100
    return keep, shifted[keep]


def answer_loss(model: Any, head: Any, batch: dict[str, Any]) -> Any:
    """model(**batch).loss - the mean cross-entropy over the labelled (answer) tokens - with the LM head applied
    only at the positions that have a label. transformers computes the logits of every position and drops the
    prompt's in the loss; with answer-only labels most rows of that (tokens x vocabulary) product, and of its
    backward, are thrown away. A forward pre-hook on the head module hands it the labelled rows only, so the call
    still goes through the wrapper's forward (DDP's and FSDP's hooks run as before). A model that does not call
    its head module (logits still 3-D) gets its logits indexed instead: the same loss, without the saving."""
    import torch

    keep, targets = answer_targets(batch["labels"])
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0][keep], *args[1:]))
    try:  # use_cache=False: a training step never reads the KV cache the forward would otherwise fill
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    finally:
        handle.remove()
    if logits.dim() == 3:
        logits = logits[keep]
    return torch.nn.functional.cross_entropy(logits.float(), targets)  # float: as ForCausalLMLoss upcasts
