"""nxd-adapter for real on CPU: a synthetic NxD-layout LoRA adapter (built here with torch.save, layout from
stages.md 3.4) is exported to PEFT, loaded with peft.PeftModel.from_pretrained on a tiny Llama and compared
numerically with the fused adapter it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.stages.conftest import stage

torch = pytest.importorskip("torch")
R, ALPHA = 4, 8


def dims(tiny: Path) -> dict[str, int]:
    cfg = json.loads((tiny / "config.json").read_text())
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    return {"hidden": cfg["hidden_size"], "q": cfg["num_attention_heads"] * head_dim,
            "kv": cfg["num_key_value_heads"] * head_dim, "layers": cfg["num_hidden_layers"]}


def nxd_adapter(root: Path, tiny: Path, *, fused_b: bool, embed_config: bool = False,
                prefix: str = "model.") -> dict[str, torch.Tensor]:
    """Write <root>/lora/model/dp_rank_00_tp_rank_00_pp_rank_00.pt (+ done, + config) and return its tensors."""
    d = dims(tiny)
    gen = torch.Generator().manual_seed(0)
    state: dict[str, object] = {}
    for layer in range(d["layers"]):
        base = f"{prefix}layers.{layer}.self_attn"
        state[f"{base}.qkv_proj.lora_A.weight"] = torch.randn(R, d["hidden"], generator=gen)
        b = torch.randn(d["q"] + 2 * d["kv"], R, generator=gen)
        if fused_b:
            state[f"{base}.qkv_proj.lora_B.weight_qkv"] = b
        else:
            q, k, v = b.split([d["q"], d["kv"], d["kv"]])
            state[f"{base}.qkv_proj.lora_B.weight_q"] = q.clone()
            state[f"{base}.qkv_proj.lora_B.weight_k"] = k.clone()
            state[f"{base}.qkv_proj.lora_B.weight_v"] = v.clone()
        state[f"{base}.o_proj.lora_A.weight"] = torch.randn(R, d["q"], generator=gen)
        state[f"{base}.o_proj.lora_B.weight"] = torch.randn(d["hidden"], R, generator=gen)
    config = {"lora_rank": R, "lora_alpha": ALPHA, "lora_dropout": 0.05, "bias": "none", "use_rslora": False,
              "target_modules": ["qkv_proj", "o_proj"], "save_lora_base": False, "merge_lora": False,
              "save_lora_config_adapter": embed_config}
    if embed_config:
        state["lora_config"] = config
    else:
        (root).mkdir(parents=True, exist_ok=True)
        (root / "adapter_config.json").write_text(json.dumps(config))
    (root / "lora" / "model").mkdir(parents=True)
    torch.save(state, root / "lora" / "model" / "dp_rank_00_tp_rank_00_pp_rank_00.pt")
    (root / "lora" / "done").touch()
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def fused_delta(tensors: dict[str, torch.Tensor], layer: int, prefix: str = "model.") -> torch.Tensor:
    base = f"{prefix}layers.{layer}.self_attn.qkv_proj"
    b = tensors.get(f"{base}.lora_B.weight_qkv")
    if b is None:
        b = torch.cat([tensors[f"{base}.lora_B.weight_{p}"] for p in "qkv"])
    return b @ tensors[f"{base}.lora_A.weight"] * (ALPHA / R)


@pytest.mark.parametrize("fused_b,embed_config", [(True, False), (False, True)])
def test_exported_adapter_loads_in_peft_and_equals_the_fused_one(tiny, tmp_path, fused_b, embed_config):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tensors = nxd_adapter(tmp_path / "lora_adapter", tiny, fused_b=fused_b, embed_config=embed_config)
    stage("nxd-adapter", "export", "--adapter-dir", str(tmp_path / "lora_adapter"), "--tag", "lora",
          "--base-model", str(tiny), "--base-model-id", "tiny/llama", "--output", str(tmp_path / "peft"))
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["base_model_name_or_path"] == "tiny/llama" and config["r"] == R and config["lora_alpha"] == ALPHA
    assert config["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]

    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, tmp_path / "peft")
    d = dims(tiny)
    for layer in range(d["layers"]):
        attn = model.base_model.model.model.layers[layer].self_attn
        # The PEFT delta of each projection is exactly its rows of the fused NxD delta (no averaging, defect 18).
        deltas = [getattr(attn, p).get_delta_weight("default") for p in ("q_proj", "k_proj", "v_proj")]
        assert torch.allclose(torch.cat(deltas), fused_delta(tensors, layer), atol=1e-5)
        expect_o = (tensors[f"model.layers.{layer}.self_attn.o_proj.lora_B.weight"]
                    @ tensors[f"model.layers.{layer}.self_attn.o_proj.lora_A.weight"] * (ALPHA / R))
        assert torch.allclose(attn.o_proj.get_delta_weight("default"), expect_o, atol=1e-5)

    # The adapter changes the model's output, and merging gives base weight + fused delta rows.
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    fresh = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    with torch.no_grad():
        tuned_logits = model(input_ids=ids).logits
        base_logits = fresh(input_ids=ids).logits
    assert not torch.allclose(tuned_logits, base_logits, atol=1e-4)
    merged = model.merge_and_unload()
    q_rows = fused_delta(tensors, 0)[: d["q"]]
    assert torch.allclose(merged.model.layers[0].self_attn.q_proj.weight,
                          fresh.model.layers[0].self_attn.q_proj.weight + q_rows, atol=1e-5)


def test_tp_sharded_adapter_is_refused(tiny, tmp_path):
    tensors = nxd_adapter(tmp_path / "lora_adapter", tiny, fused_b=True)
    other = {k: v[: v.shape[0] // 2].clone() if "lora_B" in k else v for k, v in tensors.items()}
    torch.save(other, tmp_path / "lora_adapter" / "lora" / "model" / "dp_rank_00_tp_rank_01_pp_rank_00.pt")
    out = stage("nxd-adapter", "export", "--adapter-dir", str(tmp_path / "lora_adapter"), "--base-model", str(tiny),
                "--base-model-id", "x", "--output", str(tmp_path / "peft"), check=False)
    assert out.returncode == 2 and "TP-sharded" in out.stderr
    assert not (tmp_path / "peft" / "adapter_model.safetensors").exists()


def test_incomplete_save_and_wrong_rank_are_refused(tiny, tmp_path):
    nxd_adapter(tmp_path / "a", tiny, fused_b=True)
    (tmp_path / "a" / "lora" / "done").unlink()
    out = stage("nxd-adapter", "export", "--adapter-dir", str(tmp_path / "a"), "--base-model", str(tiny),
                "--base-model-id", "x", "--output", str(tmp_path / "p"), check=False)
    assert out.returncode == 2 and "no `done` marker" in out.stderr

    nxd_adapter(tmp_path / "b", tiny, fused_b=True)
    cfg = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    (tmp_path / "b" / "adapter_config.json").write_text(json.dumps({**cfg, "lora_rank": 8}))
    out = stage("nxd-adapter", "export", "--adapter-dir", str(tmp_path / "b"), "--base-model", str(tiny),
                "--base-model-id", "x", "--output", str(tmp_path / "p"), check=False)
    assert out.returncode == 2 and "expected (8, 128)" in out.stderr


def test_inspect_checks_saved_keys_against_the_mode(tiny, tmp_path):
    nxd_adapter(tmp_path / "lora_adapter", tiny, fused_b=True)
    ok = stage("nxd-adapter", "inspect", "--adapter-dir", str(tmp_path / "lora_adapter"), "--mode", "adapter")
    assert "matches mode adapter" in ok.stdout
    # An adapter-only save where base+lora was asked for: what merge_sharded_lora=True silently does (defect 12).
    out = stage("nxd-adapter", "inspect", "--adapter-dir", str(tmp_path / "lora_adapter"), "--mode",
                "base_and_lora", check=False)
    assert out.returncode == 2 and "merge_sharded_lora=True" in out.stderr
    # A save that also holds base weights is not an adapter-only save, and export refuses it.
    shard = tmp_path / "lora_adapter" / "lora" / "model" / "dp_rank_00_tp_rank_00_pp_rank_00.pt"
    state = torch.load(shard, weights_only=True)
    state["model.layers.0.self_attn.o_proj.weight"] = torch.zeros(128, 128)
    torch.save(state, shard)
    stage("nxd-adapter", "inspect", "--adapter-dir", str(tmp_path / "lora_adapter"), "--mode", "base_and_lora")
    out = stage("nxd-adapter", "export", "--adapter-dir", str(tmp_path / "lora_adapter"), "--base-model", str(tiny),
                "--base-model-id", "x", "--output", str(tmp_path / "p"), check=False)
    assert out.returncode == 2 and "not a LoRA tensor" in out.stderr
