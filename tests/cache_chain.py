"""The small command chain the cache tests run on the local backend and on Slurm: download -> finetune (a learning
rate param) -> merge [-> evaluate], each stage writing and declaring its outputs."""

from __future__ import annotations

EVALUATE = """
  - name: evaluate
    kind: command
    run: 'mkdir -p reports && wc -c < merged/model > reports/evaluate.txt'
    outputs: [reports/evaluate.txt]
"""


def cache_chain(name: str, cluster: str = "local", evaluate: bool = False, lr: str = "0.001") -> str:
    return f"""name: {name}
cluster: {cluster}
stages:
  - name: download
    kind: command
    run: 'mkdir -p model && echo weights > model/weights.bin && echo cfg > model/config.json'
    outputs: [model/config.json]
  - name: finetune
    kind: command
    params: {{lr: {lr}}}
    run: 'sleep 1; mkdir -p ckpt && {{ cat model/weights.bin; echo "$PARAM_LR"; }} > ckpt/adapter'
    outputs: [ckpt/adapter]
  - name: merge
    kind: command
    run: 'mkdir -p merged && cat ckpt/adapter > merged/model'
    outputs: [merged/model]
""" + (EVALUATE if evaluate else "")
