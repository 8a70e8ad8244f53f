"""The finetune stage's batching: which packed/padded sequences each rank takes at each micro-batch (a
deterministic epoch-shuffled stream, so a restarted job continues where it stopped), and their collation into
padded tensors with -100 labels for padding and prompts.
"""

from __future__ import annotations

import random
from typing import Any

from stages import data as datalib


def micro_batches(n_items: int, batch: int, world: int, rank: int, seed: int, start: int, count: int) -> list[list[int]]:
    """Micro-batches start..start+count-1 of a deterministic epoch-shuffled stream: the same on restart."""
    per = batch * world
    out = []
    for k in range(start, start + count):
        first = k * per + rank * batch
        indices = []
        for pos in range(first, first + batch):
            epoch, offset = divmod(pos, n_items)
            order = list(range(n_items))
            random.Random(seed + epoch).shuffle(order)
            indices.append(order[offset])
        out.append(indices)
    return out


def collate(chunks: list[datalib.Chunk], pad_id: int, device: Any) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in chunks)
    ids = torch.full((len(chunks), width), pad_id, dtype=torch.long)
    labels = torch.full((len(chunks), width), -100, dtype=torch.long)  # padding and prompts: no loss
    mask = torch.zeros((len(chunks), width), dtype=torch.long)
    for i, (chunk, chunk_labels) in enumerate(chunks):
        ids[i, :len(chunk)] = torch.tensor(chunk)
        labels[i, :len(chunk_labels)] = torch.tensor(chunk_labels)
        mask[i, :len(chunk)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
