"""The neuron family against the real optimum-neuron 0.4.5 (the gen2 pin), not against our picture of it.

The wheel is installed here with `--no-deps` into a private directory, next to the exact versions it requires
(optimum 2.0.0, trl 0.24.0, transformers 4.57.1, peft 0.17.0: optimum_neuron-0.4.5.dist-info/METADATA).
1. Without importing it (torch_xla and neuronx_distributed cannot be installed here), every call that
   stages/neuron_finetune.py (gen2 path) and stages/consolidate.py make into optimum.neuron and optimum-cli is
   checked with `ast` against the installed source: constructor and method signatures, dataclass fields through
   the whole NeuronSFTConfig hierarchy, exported names, and the consolidate CLI's argparse definition.
2. The real 0.4.5 consolidation (`optimum-cli neuron consolidate`, its argparse, path logic, metadata reader and
   weight transformations) runs, through our consolidate stage program, on a checkpoint laid out exactly as
   0.4.5 + NxD 2.28 write it; the adapter it produces is loaded with PEFT 0.17.0 into a tiny Llama and compared
   with the weights that were sharded. neuronx_distributed and torch_xla are replaced by tests/stages/
   neuron_standin.py, which defines only the names 0.4.5 imports and raises if any of its functions is called.

Training itself (NeuronSFTTrainer on Trainium) is not run: no Trainium here.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stages import consolidate
from stages import data as datalib
from stages import neuron_finetune as nf
from tests.conftest import REPO
from tests.unit.test_neuron_stage import ROWS, rendered_args

SITE_PINS = ["optimum-neuron==0.4.5", "optimum==2.0.0", "trl==0.24.0", "transformers==4.57.1", "peft==0.17.0"]
STANDIN = Path(__file__).parent / "neuron_standin.py"

# Meta-Llama-3-8B-Instruct's chat template (tokenizer_config.json "chat_template" of the Hub repo).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

# Gen 2 upstream's formatter, verbatim: awslabs/awsome-distributed-training bce7ca54 (PR #1005)
# 3.test_cases/pytorch/optimum-neuron/llama3/src/train.py, format_dolly.
UPSTREAM_FORMAT_DOLLY = '''
def format_dolly(example, tokenizer):
    """Format Dolly dataset examples using the tokenizer's chat template."""
    user_content = example["instruction"]
    if len(example["context"]) > 0:
        user_content += f"\\n\\nContext: {example['context']}"

    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": user_content},
        {"role": "assistant", "content": example["response"]},
    ]

    return tokenizer.apply_chat_template(messages, tokenize=False)
'''


@pytest.fixture(scope="session")
def site() -> Path:
    target = Path(sys.prefix) / "optimum-neuron-0.4.5-site"
    marker = target / ".complete"
    if not marker.is_file() or marker.read_text() != " ".join(SITE_PINS):
        out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                              "--upgrade", *SITE_PINS], capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"could not install optimum-neuron for the check:\n{out.stderr[-2000:]}"
        marker.write_text(" ".join(SITE_PINS))
    return target


# --- reading the installed source --------------------------------------------------------------------------------

def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def class_def(path: Path, name: str) -> ast.ClassDef:
    found = [n for n in tree(path).body if isinstance(n, ast.ClassDef) and n.name == name]
    assert found, f"{path} defines no class {name}"
    return found[0]


def method(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    found = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name]
    assert found, f"{cls.name} has no method {name}"
    return found[0]


def bases(cls: ast.ClassDef) -> list[str]:
    return [ast.unparse(b) for b in cls.bases]


def fields(cls: ast.ClassDef) -> set[str]:
    return {s.target.id for s in cls.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}


def named_parameters(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    return [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]


def accepted_keywords(fn: ast.FunctionDef) -> set[str]:
    """Named parameters plus what a **kwargs body takes out by name (`kwargs.pop("x")`, `"x" in kwargs`)."""
    names = set(named_parameters(fn))
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("pop", "get") \
                and ast.unparse(node.func.value) == "kwargs" and node.args and isinstance(node.args[0], ast.Constant):
            names.add(node.args[0].value)
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and isinstance(node.ops[0], ast.In) \
                and ast.unparse(node.comparators[0]) == "kwargs":
            names.add(node.left.value)
    return names


def sft_config_fields(site: Path) -> set[str]:
    """Every field of 0.4.5's NeuronSFTConfig(NeuronTrainingArguments, trl SFTConfig(transformers TrainingArguments))."""
    config = class_def(site / "optimum/neuron/trainers/sft_config.py", "NeuronSFTConfig")
    assert bases(config) == ["NeuronTrainingArguments", "SFTConfig"]
    neuron_args = class_def(site / "optimum/neuron/trainers/training_args.py", "NeuronTrainingArguments")
    sft = class_def(site / "trl/trainer/sft_config.py", "SFTConfig")
    assert bases(sft) == ["TrainingArguments"]
    hf_args = class_def(site / "transformers/training_args.py", "TrainingArguments")
    return fields(config) | fields(neuron_args) | fields(sft) | fields(hf_args)


def lora_config_fields(site: Path) -> set[str]:
    lora = class_def(site / "peft/tuners/lora/config.py", "LoraConfig")
    peft_config = class_def(site / "peft/config.py", "PeftConfig")
    mixin = class_def(site / "peft/config.py", "PeftConfigMixin")
    return fields(lora) | fields(peft_config) | fields(mixin)


# --- reading our programs ----------------------------------------------------------------------------------------

def _is_gen2_test(test: ast.expr) -> bool:
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Attribute) and test.left.attr == "sdk"
            and isinstance(test.ops[0], ast.Eq) and ast.literal_eval(test.comparators[0]) == "gen2")


def gen2_nodes(module: Path) -> list[ast.AST]:
    """Every node of the module that runs with --sdk gen2: all of it except the else side of `if args.sdk ==
    "gen2"` and what follows such an if whose body returns (the gen1 path, optimum-neuron 0.1.0)."""
    kept: list[ast.AST] = []
    blocks = ("body", "orelse", "finalbody", "handlers")

    def visit(statements: list[Any]) -> None:
        for statement in statements:
            if isinstance(statement, ast.If) and _is_gen2_test(statement.test):
                visit(statement.body)
                if statement.body and isinstance(statement.body[-1], ast.Return):
                    return
                continue
            if not any(isinstance(getattr(statement, f, None), list) for f in blocks):
                kept.extend(ast.walk(statement))
                continue
            kept.append(statement)
            for name, value in ast.iter_fields(statement):  # the header: a test, with-items, decorators, ...
                if name not in blocks:
                    kept.extend(n for v in (value if isinstance(value, list) else [value]) if isinstance(v, ast.AST)
                                for n in ast.walk(v))
            for name in blocks:
                visit(getattr(statement, name, None) or [])

    visit(tree(module).body)
    return kept


def exported_names(path: Path) -> set[str]:
    """What `from <module> import X` can take: names bound at the top of the module, and for a lazy package the
    strings of its _import_structure."""
    names: set[str] = set()
    for node in tree(path).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "_import_structure":
            names |= {c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return names


def calls_to(nodes: list[ast.AST], name: str) -> list[ast.Call]:
    """Calls whose callee's source text ends with `name` (e.g. "NeuronSFTTrainer", "from_pretrained")."""
    return [n for n in nodes if isinstance(n, ast.Call) and ast.unparse(n.func).split(".")[-1] == name.split(".")[-1]
            and ast.unparse(n.func).endswith(name)]


def literal_keywords(call: ast.Call) -> set[str]:
    return {k.arg for k in call.keywords if k.arg is not None}


def starred_sources(call: ast.Call) -> list[str]:
    return [ast.unparse(k.value) for k in call.keywords if k.arg is None]


def gen2_args(stage: str = "finetune") -> argparse.Namespace:
    args = nf.parse(rendered_args(stage))
    assert args.sdk == "gen2"
    return args


NF = REPO / "stages" / "neuron_finetune.py"
CONSOLIDATE = REPO / "stages" / "consolidate.py"


# --- 1. every call against the real signatures ------------------------------------------------------------------

def test_sft_config_gets_only_fields_that_exist(site, monkeypatch):
    real = sft_config_fields(site)
    assert {"max_length", "packing", "tensor_parallel_size", "use_xser", "bf16", "seed"} <= real
    assert "max_seq_length" not in real  # removed: the 0.1.0 name must not reach 0.4.5
    (call,) = calls_to(gen2_nodes(NF), "NeuronSFTConfig")
    assert literal_keywords(call) == set() and starred_sources(call) == ["training_kwargs(args, run_mode)"]
    for mode in ("compile", "train"):
        passed = set(nf.training_kwargs(gen2_args(), mode))
        assert passed <= real, f"not a NeuronSFTConfig field in 0.4.5: {sorted(passed - real)}"


def test_a_removed_or_misspelt_config_field_fails_this_check(site):
    """The check above really bites: the 0.1.0 spelling, and a typo, are caught."""
    real = sft_config_fields(site)
    gen1 = nf.training_kwargs(nf.parse([*rendered_args("finetune"), "--sdk", "gen1"]), "train")
    assert "max_seq_length" in gen1 and not set(gen1) <= real
    assert not {"tensor_parallel_degree"} <= real


def test_sft_trainer_call_matches_the_real_constructor(site):
    init = method(class_def(site / "optimum/neuron/trainers/sft_trainer.py", "NeuronSFTTrainer"), "__init__")
    params = named_parameters(init)
    assert init.args.kwarg is None, "0.4.5's NeuronSFTTrainer.__init__ takes no **kwargs"
    assert "processing_class" in params and "tokenizer" not in params
    (call,) = calls_to(gen2_nodes(NF), "NeuronSFTTrainer")
    assert not call.args and not starred_sources(call)
    passed = literal_keywords(call)
    assert passed <= set(params), f"not NeuronSFTTrainer parameters in 0.4.5: {sorted(passed - set(params))}"
    assert {"model", "args", "train_dataset", "processing_class", "peft_config", "formatting_func"} == passed


def test_model_loading_matches_the_real_from_pretrained(site):
    auto_module = site / "optimum/neuron/models/training/modeling_auto.py"
    assert bases(class_def(auto_module, "NeuronModelForCausalLM")) == ["_BaseNeuronModelClass"]
    auto = method(class_def(auto_module, "_BaseNeuronModelClass"), "from_pretrained")
    assert named_parameters(auto)[1:3] == ["pretrained_model_name_or_path", "trn_config"]
    real = method(class_def(site / "optimum/neuron/models/training/modeling_utils.py", "NeuronModelMixin"),
                  "from_pretrained")
    assert named_parameters(real)[1:3] == ["pretrained_model_name_or_path", "trn_config"]
    (call,) = calls_to(gen2_nodes(NF), "NeuronModelForCausalLM.from_pretrained")
    assert [ast.unparse(a) for a in call.args] == ["str(args.model)", "config.trn_config"]
    # `**dtype` is stages.common.dtype_kwargs: {"dtype": ...} under the pinned transformers 4.57.1.
    assert starred_sources(call) == ["dtype"]
    assert literal_keywords(call) | {"dtype"} <= accepted_keywords(real)
    # config.trn_config: set by NeuronTrainingArguments.__post_init__.
    post_init = method(class_def(site / "optimum/neuron/trainers/training_args.py", "NeuronTrainingArguments"),
                       "__post_init__")
    assert "self.trn_config = TrainingNeuronConfig(" in ast.unparse(post_init)


def test_lora_config_gets_only_peft_fields(site):
    real = lora_config_fields(site)
    (call,) = calls_to(gen2_nodes(NF), "LoraConfig")
    assert starred_sources(call) == ["lora_kwargs(args)"]
    assert set(nf.lora_kwargs(gen2_args())) <= real


def test_every_imported_optimum_neuron_name_exists(site):
    checked = []
    for module in (NF, CONSOLIDATE):
        for node in gen2_nodes(module):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("optimum.neuron"):
                package = site / node.module.replace(".", "/")
                names = exported_names(package / "__init__.py" if package.is_dir() else package.with_suffix(".py"))
                for alias in node.names:
                    assert alias.name in names, f"optimum-neuron 0.4.5 has no {node.module}.{alias.name}"
                    checked.append(f"{node.module}.{alias.name}")
    assert sorted(checked) == ["optimum.neuron.NeuronSFTConfig", "optimum.neuron.NeuronSFTTrainer",
                               "optimum.neuron.models.training.NeuronModelForCausalLM"]


def test_train_and_save_calls_match_the_real_trainer(site):
    trainer = class_def(site / "optimum/neuron/trainers/transformers.py", "NeuronTrainer")
    assert "`resume_from_checkpoint` is not supported by the NeuronTrainer." in ast.unparse(method(trainer, "_train"))
    nodes = gen2_nodes(NF)
    (train,) = calls_to(nodes, "trainer.train")
    assert not train.args and not train.keywords  # the only thing 0.4.5 accepts
    (save,) = calls_to(nodes, "trainer.save_model")
    assert named_parameters(method(trainer, "save_model"))[1] == "output_dir" and len(save.args) == 1


def real_consolidate_parser(site: Path) -> argparse.ArgumentParser:
    """The real `optimum-cli neuron consolidate` argparse, rebuilt from its add_argument calls (literal values)."""
    command = class_def(site / "optimum/commands/neuron/subcommands.py", "ConsolidateCommand")
    parser = argparse.ArgumentParser(exit_on_error=False)
    for node in ast.walk(method(command, "parse_args")):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "parser.add_argument":
            kwargs = {k.arg: ({"str": str}[k.value.id] if isinstance(k.value, ast.Name) else ast.literal_eval(k.value))
                      for k in node.keywords if k.arg}
            parser.add_argument(*[ast.literal_eval(a) for a in node.args], **kwargs)
    return parser


def test_consolidate_cli_argv_matches_the_real_parser(site):
    runs = [c for c in calls_to(gen2_nodes(CONSOLIDATE), "subprocess.run")
            if isinstance(c.args[0], ast.List) and "consolidate" in ast.unparse(c.args[0])]
    (call,) = runs
    argv = [ast.literal_eval(e) if isinstance(e, ast.Constant) else f"<{ast.unparse(e)}>" for e in call.args[0].elts]
    assert argv[:3] == ["<cli>", "neuron", "consolidate"]
    parsed = real_consolidate_parser(site).parse_args(argv[3:])
    assert (parsed.checkpoint_dir, parsed.output_dir, parsed.format) == ("<str(source)>", "<str(output)>", "safetensors")
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        real_consolidate_parser(site).parse_args([*argv[3:5], "--save-format", "safetensors"])


def test_the_checkpoint_markers_are_the_real_packages(site):
    """DONE_MARKERS["gen2"] = <ADAPTER dir>/<tag>/done with 0.4.5's names (NxD's `done`: see the layout test)."""
    peft_model = (site / "optimum/neuron/peft/peft_model.py").read_text()
    assert 'ADAPTER_MODEL_PARALLEL_SHARDS_DIR_NAME = "adapter_shards"' in peft_model
    assert 'output_dir = os.path.join(save_directory, f"adapter_{adapter_name}")' in peft_model
    assert "tag=ADAPTER_MODEL_PARALLEL_SHARDS_DIR_NAME" in peft_model
    assert nf.DONE_MARKERS["gen2"] == "adapter_default/adapter_shards/done"


# --- prompt and split -------------------------------------------------------------------------------------------

def test_prompt_is_gen2_upstreams_chat_template(tiny):
    """Our text for a Dolly row is exactly what upstream's format_dolly builds, with and without context."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.chat_template = LLAMA3_TEMPLATE
    namespace: dict[str, Any] = {}
    exec(UPSTREAM_FORMAT_DOLLY, namespace)  # noqa: S102 - upstream's function text, above
    for row in ROWS[:2]:
        assert nf.chat_text(tokenizer, row, gen2_args().system_prompt) == namespace["format_dolly"](row, tokenizer)
    assert "\n\nContext: Some context.<|eot_id|>" in nf.chat_text(tokenizer, ROWS[1], "You are a helpful assistant.")


def test_held_out_rows_are_never_trained_on(tmp_path, tiny):
    """The rows finetune trains on and the rows evaluate (stages.data.load of --chat-data) measures are disjoint,
    together the whole file, and evaluate's prompt + answer is the training text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.chat_template = LLAMA3_TEMPLATE
    tokenizer.eos_token = "<|eot_id|>"  # as in Meta-Llama-3-8B-Instruct's tokenizer_config.json
    source = tmp_path / "dataset.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    rows = nf.read_rows(source)
    nf.write_chat_data(tmp_path / "chat.jsonl", rows, "You are a helpful assistant.")
    train = nf.split_rows(rows, 0.1, 42)
    _, held_out = datalib.load(tmp_path / "chat.jsonl", "chat", tokenizer, 0.1, 42)
    trained = {nf.chat_text(tokenizer, r, "You are a helpful assistant.") for r in train}
    measured = {e.prompt + e.answer for e in held_out}
    assert len(held_out) == 4 and len(train) == 36
    assert not trained & measured
    assert trained | measured == {nf.chat_text(tokenizer, r, "You are a helpful assistant.") for r in rows}


# --- 2. the real consolidation on the real layout ---------------------------------------------------------------

TP, RANK_R, LAYERS = 2, 4, 2
HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM = 16, 32, 4, 2, 4
PREFIX = "base_model.model.model.layers"


def tiny_llama(path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(path)


def true_adapter() -> dict[str, Any]:
    """The LoRA weights as PEFT names them in adapter_model.safetensors. gate/up share lora_A: 0.4.5 trains them
    as one fused gate_up_proj LoRA, whose consolidation duplicates lora_A (FusedLinearsSpec)."""
    import torch

    g = torch.Generator().manual_seed(0)
    dims = {"self_attn.q_proj": (HIDDEN, HEADS * HEAD_DIM), "self_attn.k_proj": (HIDDEN, KV_HEADS * HEAD_DIM),
            "self_attn.v_proj": (HIDDEN, KV_HEADS * HEAD_DIM), "self_attn.o_proj": (HEADS * HEAD_DIM, HIDDEN),
            "mlp.gate_proj": (HIDDEN, INTER), "mlp.up_proj": (HIDDEN, INTER), "mlp.down_proj": (INTER, HIDDEN)}
    weights = {}
    for layer in range(LAYERS):
        for module, (fan_in, fan_out) in dims.items():
            weights[f"{PREFIX}.{layer}.{module}.lora_A.weight"] = torch.randn(RANK_R, fan_in, generator=g)
            weights[f"{PREFIX}.{layer}.{module}.lora_B.weight"] = torch.randn(fan_out, RANK_R, generator=g)
        weights[f"{PREFIX}.{layer}.mlp.up_proj.lora_A.weight"] = weights[f"{PREFIX}.{layer}.mlp.gate_proj.lora_A.weight"]
    return weights


def sharded(weights: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per TP rank, the state dict NeuronPeftModel.save_pretrained hands NxD (peft's get_peft_model_state_dict of
    the Neuron model: adapter name dropped), and the mp_metadata optimum writes (create_parameter_metadata: the
    Neuron model's parameter names, with the adapter name, and its transformation specs).

    Sharding as 0.4.5 builds the model (models/training/llama/modeling_llama.py, peft/tuners/lora/layer.py): with
    num_key_value_heads divisible by TP (Llama 3 8B on trn1: 8 KV heads, TP 8) q/k/v/o are separate
    Column/Row-parallel linears; gate/up are one ColumnParallelLinear gate_up_proj (FusedLinearsSpec); LoRA on a
    ColumnParallelLinear: lora_A plain nn.Linear, lora_B ColumnParallelLinear (dim 0); on a RowParallelLinear:
    lora_A RowParallelLinear (dim 1), lora_B plain."""
    import torch

    shards: list[dict[str, Any]] = [{} for _ in range(TP)]
    params: dict[str, Any] = {}
    parallel = {"tensor_model_parallel": True, "partition_stride": 1, "num_partitions": TP}

    def put(name: str, tensor: Any, dim: int | None) -> None:
        for rank in range(TP):
            shards[rank][name] = tensor.clone() if dim is None else tensor.chunk(TP, dim=dim)[rank].clone()
        neuron_name = name.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
        params[neuron_name] = {"tensor_model_parallel": False} if dim is None else {**parallel, "partition_dim": dim}

    specs = []
    for layer in range(LAYERS):
        for module in ("q_proj", "k_proj", "v_proj"):  # ColumnParallelLinear
            base = f"{PREFIX}.{layer}.self_attn.{module}"
            put(f"{base}.lora_A.weight", weights[f"{base}.lora_A.weight"], None)
            put(f"{base}.lora_B.weight", weights[f"{base}.lora_B.weight"], 0)
            params[f"{base}.base_layer.weight"] = {**parallel, "partition_dim": 0}
        for base, _ in ((f"{PREFIX}.{layer}.self_attn.o_proj", 0), (f"{PREFIX}.{layer}.mlp.down_proj", 0)):
            put(f"{base}.lora_A.weight", weights[f"{base}.lora_A.weight"], 1)  # RowParallelLinear
            put(f"{base}.lora_B.weight", weights[f"{base}.lora_B.weight"], None)
            params[f"{base}.base_layer.weight"] = {**parallel, "partition_dim": 1}
        mlp = f"{PREFIX}.{layer}.mlp"
        put(f"{mlp}.gate_up_proj.lora_A.weight", weights[f"{mlp}.gate_proj.lora_A.weight"], None)
        gate, up = (weights[f"{mlp}.{m}.lora_B.weight"].chunk(TP, dim=0) for m in ("gate_proj", "up_proj"))
        for rank in range(TP):  # each rank holds [its gate rows; its up rows] (create_local_fused_weight)
            shards[rank][f"{mlp}.gate_up_proj.lora_B.weight"] = torch.cat([gate[rank], up[rank]], dim=0).clone()
        params[f"{mlp}.gate_up_proj.lora_B.default.weight"] = {**parallel, "partition_dim": 0}
        params[f"{mlp}.gate_up_proj.base_layer.weight"] = {**parallel, "partition_dim": 0, "partition_stride": 2}
        specs.append({"module_fully_qualified_name": f"{PREFIX}.{layer}.self_attn", "specs": []})
        specs.append({"module_fully_qualified_name": mlp, "specs": [["FusedLinearsSpec", {
            "fused_linear_name": "gate_up_proj", "linear_names": ["gate_proj", "up_proj"], "bias": False,
            "fuse_axis": 0, "original_dims": [INTER, INTER], "tp_size": TP, "peft_type": "lora"}]]})
    params["base_model.model.model.embed_tokens.weight"] = {**parallel, "partition_dim": 0}
    params["base_model.model.model.norm.weight"] = {"tensor_model_parallel": False}
    return shards, {"parameters": params, "model_weight_transformation_specs": specs}


def write_checkpoint(root: Path, weights: dict[str, Any], done: bool = True) -> Path:
    """checkpoint-N as 0.4.5 + NxD 2.28 leave it with use_xser=False (what stages.neuron_finetune sets):
    - NeuronTrainer._save_checkpoint (optimum/neuron/trainers/transformers.py): output_dir/checkpoint-<step>/,
      save_model there, then trainer_state.json;
    - NeuronPeftModel.save_pretrained (optimum/neuron/peft/peft_model.py): adapter_<name>/, metadata
      adapter_shards/mp_metadata_pp_rank_<pp>.json, NxD save_checkpoint(adapter_<name>, tag="adapter_shards"),
      then adapter_config.json;
    - neuronx_distributed/trainer/checkpoint.py (v2.28.0): <tag>/checkpoint at begin(), the model as
      <tag>/model/dp_rank_00_tp_rank_<tp>_pp_rank_00.pt (_get_path; torch.save when use_xser is False),
      <tag>/done at end() once every rank saved."""
    import torch

    shards, metadata = sharded(weights)
    adapter = root / "adapter_default"
    tag = adapter / "adapter_shards"
    (tag / "model").mkdir(parents=True)
    (tag / "mp_metadata_pp_rank_0.json").write_text(json.dumps(metadata, indent=4))
    (tag / "checkpoint").write_text("1")
    for rank, state in enumerate(shards):
        torch.save(state, tag / "model" / f"dp_rank_00_tp_rank_{rank:02d}_pp_rank_00.pt")
    if done:
        (tag / "done").write_text("1")
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK_R, "lora_alpha": 2 * RANK_R, "lora_dropout": 0.0,
        "bias": "none", "base_model_name_or_path": None,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}))
    (root / "trainer_state.json").write_text(json.dumps({"global_step": int(root.name.split("-")[-1])}))
    return root


def optimum_cli(bin_dir: Path, site: Path) -> None:
    """The console script pip writes for optimum-neuron (`optimum.commands.optimum_cli:main`), run under the
    pinned packages, with the stand-ins installed first."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "optimum-cli"
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.path[:0] = [{str(STANDIN.parent)!r}, {str(site)!r}]\n"
                      "import neuron_standin\nneuron_standin.install()\n"
                      "from optimum.commands.optimum_cli import main\nsys.exit(main())\n")
    script.chmod(0o755)


PEFT_LOAD = """
import sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from peft import PeftModel
import peft, transformers
assert (peft.__version__, transformers.__version__) == ("0.17.0", "4.57.1"), (peft.__version__, transformers.__version__)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[1]), sys.argv[2])
expected = load_file(sys.argv[3])
state = model.state_dict()
for name, tensor in expected.items():
    live = name.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
    assert torch.equal(state[live], tensor), name
ids = torch.tensor([[1, 2, 3, 4]])
with model.disable_adapter():
    base = model(input_ids=ids).logits
assert not torch.allclose(model(input_ids=ids).logits, base)
print("peft loaded", len(expected), "tensors")
"""


def test_real_consolidation_of_the_real_layout_loads_with_peft(site, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    weights = true_adapter()
    checkpoints = tmp_path / "model_checkpoints"
    write_checkpoint(checkpoints / "checkpoint-400", {k: torch.zeros_like(v) for k, v in weights.items()})
    write_checkpoint(checkpoints / "checkpoint-800", weights)
    write_checkpoint(checkpoints / "checkpoint-1200", {k: torch.ones_like(v) for k, v in weights.items()}, done=False)
    optimum_cli(tmp_path / "bin", site)
    out = tmp_path / "adapter_consolidated"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run([sys.executable, "-m", "stages", "consolidate", "--family", "neuron", "--neuron-sdk", "gen2",
                          "--checkpoints", str(checkpoints), "--output", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "consolidating " + str(checkpoints / "checkpoint-800") in run.stdout
    got = load_file(str(out / "adapter_model.safetensors"))
    assert sorted(got) == sorted(weights)  # PEFT's saved names: no adapter name, no gate_up_proj
    for name, tensor in weights.items():
        assert torch.equal(got[name], tensor), name
    assert json.loads((out / "adapter_config.json").read_text())["r"] == RANK_R

    model = tmp_path / "tiny"
    tiny_llama(model)
    save_file({k: v.clone() for k, v in weights.items()}, str(tmp_path / "expected.safetensors"))
    load = subprocess.run([sys.executable, "-c", PEFT_LOAD, str(model), str(out), str(tmp_path / "expected.safetensors")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert load.returncode == 0 and f"peft loaded {len(weights)} tensors" in load.stdout, load.stderr[-3000:]


def test_the_old_argument_makes_the_real_cli_fail(site, tmp_path):
    """What consolidate passed before (checkpoint-N/adapter_default): 0.4.5 looks for adapter_shards/adapter_shards."""
    write_checkpoint(tmp_path / "checkpoint-800", true_adapter())
    optimum_cli(tmp_path / "bin", site)
    run = subprocess.run([str(tmp_path / "bin" / "optimum-cli"), "neuron", "consolidate",
                          str(tmp_path / "checkpoint-800" / "adapter_default"), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "adapter_shards/adapter_shards/model" in run.stderr


def test_consolidate_refuses_a_checkpoint_without_the_nxd_marker(tmp_path):
    write_checkpoint(tmp_path / "checkpoint-800", true_adapter(), done=False)
    (tmp_path / "checkpoint-800" / "done").write_text("1")  # where our own finetune writes it, not NxD
    with pytest.raises(consolidate.StageError, match="adapter_default/adapter_shards/done"):
        consolidate.neuron_source(tmp_path, "gen2")
