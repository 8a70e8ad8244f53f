"""nxd-adapter for real on CPU, on adapters saved exactly as neuronx-distributed 2.28 saves them.

NxD cannot be installed here, so each save is written by this test from the layout facts of
tests/fixtures/neuronx_distributed_2_28.json (tag v2.28.0; trainer/checkpoint.py for the file names and the
`done` marker, modules/lora/model.py for the keys and adapter_config.json, modules/lora/tp_layer.py and
modules/qkv_linear.py for the TP sharding and trn1's tiled KV replication): one torch.save'd dict per TP rank,
the GQA qkv_proj lora_B and the o_proj lora_A cut into rank shards, the k/v rows replicated kv_replicator times.
That stands in for a finetune on Trainium. The exported adapter is loaded with the real peft on a tiny Llama and
compared numerically with the full LoRA tensors the shards were cut from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.stages.conftest import stage

torch = pytest.importorskip("torch")
FACTS = json.loads((REPO / "tests" / "fixtures" / "neuronx_distributed_2_28.json").read_text())
R, ALPHA = 4, 8


def dims(tiny: Path) -> dict[str, int]:
    cfg = json.loads((tiny / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return {"hidden": cfg["hidden_size"], "q": cfg["num_attention_heads"] * head_dim,
            "kv": cfg["num_key_value_heads"] * head_dim, "layers": cfg["num_hidden_layers"]}


def full_lora(tiny: Path) -> dict[str, torch.Tensor]:
    """The whole LoRA factors (what a single device would hold), in NxD key names, small like trained ones."""
    d = dims(tiny)
    gen = torch.Generator().manual_seed(0)
    out = {}
    for layer in range(d["layers"]):
        attn = f"model.layers.{layer}.self_attn"
        out[f"{attn}.qkv_proj.lora_A.weight"] = torch.randn(R, d["hidden"], generator=gen) * 0.1
        for part, rows in (("q", d["q"]), ("k", d["kv"]), ("v", d["kv"])):
            out[f"{attn}.qkv_proj.lora_B.weight_{part}"] = torch.randn(rows, R, generator=gen) * 0.1
        out[f"{attn}.o_proj.lora_A.weight"] = torch.randn(R, d["q"], generator=gen) * 0.1
        out[f"{attn}.o_proj.lora_B.weight"] = torch.randn(d["hidden"], R, generator=gen) * 0.1
    return out


def rank_state(full: dict[str, torch.Tensor], rank: int, tp: int, kv_rep: int, fuse_qkv: bool) -> dict:
    """What TP rank `rank` holds (fixture `lora_keys`): GQA lora_B rows and RowParallel lora_A columns are
    sharded, k/v first tiled kv_rep times (trn1: master.repeat(m, 1)); the other factor is whole on every rank."""
    state: dict[str, object] = {}
    for key, value in full.items():
        if ".qkv_proj.lora_B." in key:
            if key.endswith(("weight_k", "weight_v")):
                value = value.repeat(kv_rep, 1)
            state[key] = value.chunk(tp, dim=0)[rank].clone()
        elif ".o_proj.lora_A." in key:
            state[key] = value.chunk(tp, dim=1)[rank].clone()
        else:
            state[key] = value.clone()
    if fuse_qkv:  # fixture: one weight_qkv = cat(q_r, k_r, v_r) per rank
        for prefix in sorted({k.rsplit(".weight_", 1)[0] for k in state if ".lora_B.weight_" in k}):
            parts = [state.pop(f"{prefix}.weight_{p}") for p in "qkv"]
            state[f"{prefix}.weight_qkv"] = torch.cat(parts)
    return state


def nxd_save(adapter_dir: Path, tiny: Path, *, tp: int = 4, kv_rep: int = 2, fuse_qkv: bool = False,
             embed_config: bool = False, states: list[dict] | None = None) -> dict[str, torch.Tensor]:
    """nxd.save_checkpoint(checkpoint_dir_str=adapter_dir, tag="lora", model=...) as NxD 2.28 lays it out."""
    full = full_lora(tiny)
    ckpt, lora = FACTS["checkpoint"], FACTS["lora_state_dict"]
    saved = {"bias": "none", "init_lora_weights": "default", "lora_alpha": ALPHA, "lora_dropout": 0.05,
             "lora_rank": R, "use_rslora": False, "target_modules": ["qkv_proj", "o_proj"], "modules_to_save": None,
             "save_lora_base": False, "merge_lora": False, "save_lora_config_adapter": embed_config, "r": R}
    assert sorted(saved) == sorted(FACTS["lora_config"]["saved_fields"])  # selected_fields_to_save()
    for rank in range(len(states) if states is not None else tp):
        state = states[rank] if states is not None else rank_state(full, rank, tp, kv_rep, fuse_qkv)
        if embed_config:
            state[lora["embedded_key"]] = saved
        path = adapter_dir / ckpt["model_file"].format(tag="lora", tp=rank, pp=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
    if not embed_config:  # local rank 0 writes <lora_save_dir>/adapter_config.json
        (adapter_dir / lora["config_file"]).write_text(json.dumps(saved, indent=2, sort_keys=True))
    (adapter_dir / ckpt["done_file"].format(tag="lora")).write_text(ckpt["done_text"])
    return full


def export(adapter_dir: Path, tiny: Path, out: Path, *extra: str, check: bool = True):
    return stage("nxd-adapter", "export", "--adapter-dir", str(adapter_dir), "--tag", "lora", "--base-model",
                 str(tiny), "--base-model-id", "tiny/llama", "--output", str(out), *extra, check=check)


def test_fixture_layout_is_the_one_checkpoint_py_writes():
    """The names the saves above are built from, as read from NxD 2.28's trainer/checkpoint.py (_get_path)."""
    assert FACTS["tag"] == "v2.28.0" and FACTS["commit"] == "22cadad34418fb8b5939bd8cdfc7a376eede9981"
    ckpt = FACTS["checkpoint"]
    assert ckpt["model_file"].format(tag="lora", tp=3, pp=0) == "lora/model/dp_rank_00_tp_rank_03_pp_rank_00.pt"
    assert ckpt["done_file"].format(tag="lora") == "lora/done" and ckpt["done_text"] == "1"
    assert FACTS["trainer"]["save_call"] == 'nxd.save_checkpoint(checkpoint_dir_str="lora_adapter", tag="lora", model=model)'


@pytest.mark.parametrize("fuse_qkv,embed_config", [(False, False), (True, True)])
def test_tp_sharded_adapter_exports_to_the_exact_peft_adapter(tiny, tmp_path, fuse_qkv, embed_config):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    full = nxd_save(tmp_path / "lora_adapter", tiny, fuse_qkv=fuse_qkv, embed_config=embed_config)
    export(tmp_path / "lora_adapter", tiny, tmp_path / "peft", "--tp-size", "4", "--kv-replicator", "2")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["base_model_name_or_path"] == "tiny/llama" and config["r"] == R and config["lora_alpha"] == ALPHA
    assert config["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]

    base = AutoModelForCausalLM.from_pretrained(tiny)
    model = PeftModel.from_pretrained(base, tmp_path / "peft")
    for layer in range(dims(tiny)["layers"]):
        attn = model.base_model.model.model.layers[layer].self_attn
        prefix = f"model.layers.{layer}.self_attn"
        a = full[f"{prefix}.qkv_proj.lora_A.weight"]
        for proj in "qkv":  # each projection's delta is exactly its full NxD factor (no averaging, defect 18)
            expect = full[f"{prefix}.qkv_proj.lora_B.weight_{proj}"] @ a * (ALPHA / R)
            assert torch.allclose(getattr(attn, f"{proj}_proj").get_delta_weight("default"), expect, atol=1e-6)
        expect_o = full[f"{prefix}.o_proj.lora_B.weight"] @ full[f"{prefix}.o_proj.lora_A.weight"] * (ALPHA / R)
        assert torch.allclose(attn.o_proj.get_delta_weight("default"), expect_o, atol=1e-6)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits,
                                  AutoModelForCausalLM.from_pretrained(tiny)(input_ids=ids).logits, atol=1e-4)


def test_q_rows_truncated_by_merge_sharded_lora_are_refused(tiny, tmp_path):
    """NxD 2.28's merge_sharded_lora_weights keeps torch.chunk(gathered, kv_size_multiplier)[0] of every GQA lora_B,
    weight_q included (fixture lora_state_dict): every rank then holds q/2 rows, k/v de-replicated."""
    assert FACTS["lora_state_dict"]["merge_sharded_gqa_truncates_q"] is True
    full = full_lora(tiny)
    merged = {k: (v.chunk(2, dim=0)[0].clone() if k.endswith("weight_q") else v) for k, v in full.items()}
    nxd_save(tmp_path / "a", tiny, states=[dict(merged) for _ in range(4)])
    out = export(tmp_path / "a", tiny, tmp_path / "p", "--kv-replicator", "2", check=False)
    assert out.returncode == 2 and "merge_sharded_lora truncated them" in out.stderr
    assert not (tmp_path / "p" / "adapter_model.safetensors").exists()


def test_a_save_gathered_without_truncation_is_read(tiny, tmp_path):
    """merge_sharded_lora=True with kv_replicator 1 (no truncation): every rank file holds the full tensors."""
    full = full_lora(tiny)
    nxd_save(tmp_path / "a", tiny, states=[dict(full) for _ in range(2)])
    export(tmp_path / "a", tiny, tmp_path / "p", "--tp-size", "2", "--kv-replicator", "1")
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "p" / "adapter_model.safetensors")
    assert torch.equal(weights["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"],
                       full["model.layers.0.self_attn.qkv_proj.lora_B.weight_q"])


def test_wrong_replication_missing_ranks_and_incomplete_saves_are_refused(tiny, tmp_path):
    nxd_save(tmp_path / "a", tiny)
    out = export(tmp_path / "a", tiny, tmp_path / "p", "--tp-size", "8", check=False)
    assert out.returncode == 2 and "4 TP rank file(s), but the finetune ran with TP 8" in out.stderr
    out = export(tmp_path / "a", tiny, tmp_path / "p", "--kv-replicator", "4", check=False)
    assert out.returncode == 2 and "KV rows x kv_replicator 4" in out.stderr

    (tmp_path / "a" / "lora" / "model" / "dp_rank_00_tp_rank_02_pp_rank_00.pt").unlink()
    out = export(tmp_path / "a", tiny, tmp_path / "p", check=False)
    assert out.returncode == 2 and "TP rank files [0, 1, 3] are not 0..2" in out.stderr

    nxd_save(tmp_path / "b", tiny)
    (tmp_path / "b" / "lora" / "done").unlink()
    out = export(tmp_path / "b", tiny, tmp_path / "p", check=False)
    assert out.returncode == 2 and "no `done` marker" in out.stderr

    states = [rank_state(full_lora(tiny), r, 4, 2, False) for r in range(4)]
    states[3]["model.layers.0.self_attn.qkv_proj.lora_B.weight_k"] += 1.0  # replicas no longer equal
    nxd_save(tmp_path / "c", tiny, states=states)
    out = export(tmp_path / "c", tiny, tmp_path / "p", "--kv-replicator", "2", check=False)
    assert out.returncode == 2 and "KV replica 1 differs" in out.stderr

    nxd_save(tmp_path / "d", tiny)
    cfg = json.loads((tmp_path / "d" / "adapter_config.json").read_text())
    (tmp_path / "d" / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8, "lora_rank": 8}))
    out = export(tmp_path / "d", tiny, tmp_path / "p", check=False)
    assert out.returncode == 2 and "expected (8, 128)" in out.stderr
    assert not (tmp_path / "p").exists()


def test_inspect_checks_saved_keys_against_the_mode(tiny, tmp_path):
    nxd_save(tmp_path / "lora_adapter", tiny)
    ok = stage("nxd-adapter", "inspect", "--adapter-dir", str(tmp_path / "lora_adapter"), "--mode", "adapter")
    assert "matches mode adapter" in ok.stdout
    # An adapter-only save where base+lora was asked for: what merge_sharded_lora=True silently does (defect 12).
    out = stage("nxd-adapter", "inspect", "--adapter-dir", str(tmp_path / "lora_adapter"), "--mode",
                "base_and_lora", check=False)
    assert out.returncode == 2 and "merge_sharded_lora=True" in out.stderr
    # A save that also holds base weights is not an adapter-only save, and export refuses it.
    for shard in (tmp_path / "lora_adapter" / "lora" / "model").glob("*.pt"):
        state = torch.load(shard, weights_only=True)
        state["model.layers.0.self_attn.o_proj.weight"] = torch.zeros(128, 32)
        torch.save(state, shard)
    stage("nxd-adapter", "inspect", "--adapter-dir", str(tmp_path / "lora_adapter"), "--mode", "base_and_lora")
    out = export(tmp_path / "lora_adapter", tiny, tmp_path / "p", check=False)
    assert out.returncode == 2 and "not a LoRA tensor" in out.stderr
