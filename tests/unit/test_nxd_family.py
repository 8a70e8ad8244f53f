"""The nxd family (seed 000, NxD + Lightning tensor-parallel LoRA): golden scripts, the reference defects fixed in
what is rendered, and settings/pipeline checks that refuse inconsistent specs before anything is submitted.

neuronx-distributed cannot be installed off Trainium: the rendered trainer/converter command lines and LoRA fields
are checked against its 2.28 API facts in tests/fixtures/neuronx_distributed_2_28.json (argparse flags and the
LoraConfig dataclass fields extracted from the v2.28.0 sources, each fact with its upstream file). The argparse
parsers and the dataclass below are rebuilt from those facts and stand in for the real ones."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import subprocess

import pytest

from orchestrator import loader, plan
from orchestrator.errors import SpecError
from orchestrator.families import nxd
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "llama3-8b-nxd-tp-lora-trn1.yaml"
GOLDEN = REPO / "tests" / "golden" / "llama3-8b-nxd-tp-lora-trn1"
UPDATE = os.environ.get("PIPELINE_UPDATE_GOLDEN") == "1"
STAGES = ["create_env", "download", "prepare_data", "convert", "finetune", "export_adapter", "merge", "evaluate",
          "inference"]
FACTS = json.loads((REPO / "tests" / "fixtures" / "neuronx_distributed_2_28.json").read_text())
TRAINER_MARKER = '"$RUN/launch_ptl.py" "$TRAINER"'
CONVERTER_MARKER = 'python "$CONVERTER"'


def scripts(path=EXAMPLE) -> dict[str, str]:
    return {s.name: s.script for s in plan.build(loader.load(path)).stages}


def code(text: str) -> str:
    return "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))


def command_flags(text: str, marker: str) -> dict[str, str | None]:
    """The flags of the (backslash-continued) command line containing `marker`, as {flag: value or None}."""
    joined = text.replace("\\\n", " ")
    line = next(l for l in joined.splitlines() if marker in l)
    argv = shlex.split(line.split(marker, 1)[1], posix=True)
    flags: dict[str, str | None] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            flags[arg] = None if nxt is None or nxt.startswith("--") else nxt
    return flags


def expanded_argv(script: str, marker: str) -> list[str]:
    """The argv bash gives the program after `marker`, with the script's own TP/PP and stand-in paths."""
    joined = script.replace("\\\n", " ")
    line = next(l for l in joined.splitlines() if marker in l).split(marker, 1)[1]
    env = {"PATH": os.environ["PATH"], "WORKDIR": "/w", "RUN": "/w/nxd_finetune", "PRETRAINED": "/w/ck",
           "MODEL_CONFIG": "/n/config.json", "FULL_STATE": "/w/full.bin", "OUT": "/w/out",
           **dict(re.findall(r"^(TP|PP)=(\d+)$", script, re.M))}
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.split("\0")[:-1]


def parser_from_facts(flags: dict[str, dict]) -> argparse.ArgumentParser:
    """The upstream argparse rebuilt from the fixture (same names, types, actions, required, choices)."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    types = {"int": int, "float": float, "str": str, "bool": bool}
    for name, spec_ in flags.items():
        kwargs: dict = {"required": spec_.get("required", False)}
        if "action" in spec_:
            kwargs["action"] = spec_["action"]
        else:
            kwargs["type"] = types[spec_.get("type", "str")]
            if "choices" in spec_:
                kwargs["choices"] = spec_["choices"]
        parser.add_argument(name, **kwargs)
    return parser


def parse_with_facts(flags: dict[str, dict], argv: list[str]) -> argparse.Namespace:
    """Parse like upstream would; an unknown flag, a missing value or a bad int is an error (not SystemExit)."""
    args, unknown = parser_from_facts(flags).parse_known_args(argv)
    assert not unknown, f"flags the 2.28 parser does not have: {unknown}"
    return args


def test_chain_matches_golden_files():
    rendered = scripts()
    assert list(rendered) == STAGES
    for name, text in rendered.items():
        golden = GOLDEN / f"{name}.sh"
        if UPDATE:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), (
            f"{name}.sh differs from {golden}; if the change is intended, rerun with PIPELINE_UPDATE_GOLDEN=1")


def test_every_script_is_safe_to_submit():
    for name, text in scripts().items():
        assert text.startswith("#!/usr/bin/env bash\n"), name  # shebang first (defect 5)
        assert subprocess.run(["bash", "-n"], input=text, text=True, check=False).returncode == 0, name
        if name != "create_env":  # create_env builds the venv, then activates it
            assert "source /fsx/ubuntu/nxd_lora/env_nxd_ptl/bin/activate\n" in text, name  # defect 4
        else:
            assert 'source "$VENV/bin/activate"' in text
        assert "HF_TOKEN" not in code(text) and "hf_token" not in text  # never rendered (defect 3)
        assert "localhost" not in code(text), name  # defect 9


def test_converter_and_trainer_share_the_qkv_settings():
    rendered = scripts()
    conv = command_flags(rendered["convert"], 'python "$CONVERTER"')
    train = command_flags(rendered["finetune"], '"$RUN/launch_ptl.py" "$TRAINER"')
    assert conv["--hw_backend"] == "trn1"  # required since NxD 2.21 (defect 11)
    assert conv["--qkv_linear"] == train["--qkv_linear"] == "1"
    assert conv["--kv_size_multiplier"] == train["--kv_replicator"] == "4"
    assert conv["--tp_size"] == train["--tensor_parallel_size"] == "$TP"
    assert "TP=32\nPP=1\n" in rendered["convert"] and "TP=32\nPP=1\n" in rendered["finetune"]
    assert "--convert_from_full_state" in conv and conv["--input_dir"] == "$FULL_STATE"
    assert conv["--output_dir"].endswith("/pretrained_weight")
    assert train["--pretrained_ckpt"] == "$PRETRAINED"
    assert ('PRETRAINED="$WORKDIR/"nxd_checkpoints/Meta-Llama-3-8B-tp32-pp1-qkvlinear-kv4' in rendered["finetune"]
            and 'OUT="$WORKDIR/"nxd_checkpoints/Meta-Llama-3-8B-tp32-pp1-qkvlinear-kv4' in rendered["convert"])
    for flag in ("--enable_lora", "--sequence_parallel_enabled", "--selective_checkpoint_enabled"):
        assert flag in train
    assert train["--data_dir"] == "$WORKDIR/data/nxd_train" and train["--task"] == "open_qa"
    assert train["--seq_len"] == "2048" and train["--max_steps"] == train["--steps_this_run"] == "20"


def test_trainer_flags_parse_with_the_2_28_trainer_argparse():
    """Every rendered flag exists in NxD 2.28's lightning/tp_llama_hf_finetune_ptl.py with a value of its type, and
    the combination its optimizer setup accepts is rendered: without --use_zero_1 the default
    --use_gpu_compatible_precision 1 asks for master weights, and trainer/trainer.py raises (fixture
    optimizer_setup, mixed_precision); upstream's test_llama_lora_finetune.sh passes 0."""
    trainer = FACTS["trainer"]
    argv = expanded_argv(scripts()["finetune"], TRAINER_MARKER)
    args = parse_with_facts(trainer["flags"], argv)
    for flag in trainer["required_in_practice"]:
        assert flag in argv, flag
    rule = FACTS["optimizer_setup"]["rule"]
    assert not args.use_zero_1 and rule == {"without_flag": "--use_zero_1", "flag": "--use_gpu_compatible_precision",
                                            "must_be": "0"}
    assert args.use_gpu_compatible_precision == 0
    assert args.enable_lora and args.qkv_linear == 1 and args.kv_replicator == 4 and args.fuse_qkv == 0
    assert args.tensor_parallel_size == 32 and args.steps_this_run == args.max_steps == 20
    # What upstream's integration script passes, we pass too (its --hf_token/--num_train_epochs aside: the
    # tokenizer is read from the local --model_name copy, and max_steps ends training).
    upstream = set(FACTS["integration_script"]["flags"]) - {"--hf_token", "--num_train_epochs"}
    assert upstream <= set(a for a in argv if a.startswith("--"))


def test_a_removed_or_mistyped_trainer_flag_fails_the_check():
    """The check above has teeth: the 2.28 parser (from the fixture) refuses what the old NxD trainers had."""
    flags = FACTS["trainer"]["flags"]
    with pytest.raises(AssertionError, match="--use_amp"):
        parse_with_facts(flags, ["--use_amp", "1"])
    with pytest.raises(argparse.ArgumentError):
        parse_with_facts(flags, ["--qkv_linear", "true"])


def test_converter_flags_parse_with_the_2_28_converter_argparse():
    """checkpoint_converter.py (CheckpointConverterBase.get_arg_parser) at 2.28: --hw_backend and --output_dir are
    required, and its type=bool flags are only ever rendered with the value 1 (any value parses as True)."""
    conv = FACTS["converter"]["flags"]
    argv = expanded_argv(scripts()["convert"], CONVERTER_MARKER)
    args = parse_with_facts(conv, argv)
    assert args.hw_backend == "trn1" and args.tp_size == 32 and args.pp_size == 1 and args.kv_size_multiplier == 4
    assert args.qkv_linear is True and args.convert_from_full_state
    bool_flags = {name for name, f in conv.items() if f.get("type") == "bool"}
    for i, arg in enumerate(argv):
        if arg in bool_flags:
            assert argv[i + 1] == "1", arg


def test_lora_fields_are_fields_of_the_2_28_lora_config():
    """The fields rendered into launch_ptl.py and checked by create_env are accepted by NxD 2.28's LoraConfig
    dataclass (modules/lora/config.py, rebuilt from the fixture): `enable_lora`, removed in 2.21, would be a
    TypeError at start."""
    facts = FACTS["lora_config"]
    lora_config = dataclasses.make_dataclass("LoraConfig", [(k, object, dataclasses.field(default=v))
                                                            for k, v in facts["fields"].items()])
    for text in (scripts()["finetune"], scripts()["create_env"]):
        fields = json.loads(text.split("<<'PIPELINE_LORA_EOF'\n", 1)[1].split("\nPIPELINE_LORA_EOF", 1)[0])
        assert set(fields) <= set(facts["fields"]) and not set(fields) & set(facts["removed"])
        lora_config(**fields)
        with pytest.raises(TypeError, match="enable_lora"):
            lora_config(**fields, enable_lora=True)
    assert ("from neuronx_distributed.modules.lora import LoraConfig; LoraConfig(**json.load(sys.stdin))"
            in scripts()["create_env"].split("\nfi\n")[-1])  # on every run, reused env or not


def test_env_has_what_the_2_28_example_requires():
    """examples/training/llama/requirements.txt + requirements_ptl.txt at 2.28 (fixture requirements), tensorboard
    above all: the trainer's NeuronTensorBoardLogger is Lightning 2.4's TensorBoardLogger, which raises without
    tensorboard or tensorboardX (fixture logger)."""
    pins = nxd.PINS["first"] + nxd.PINS["then"]
    names = {re.split(r"[=<>~!]", p)[0].replace("_", "-").lower() for p in pins}
    for req in FACTS["requirements"]["packages"]:
        name = re.split(r"[=<>~!]", req)[0].replace("_", "-").lower()
        assert name in names, req
        if "==" in req:
            assert req in pins, req  # the same exact pin
    assert set(FACTS["logger"]["needs_one_of"]) & names
    assert "import torch_neuronx, neuronx_distributed, lightning, tensorboard" in scripts()["create_env"]


def test_converter_bool_flags_only_when_true(write_spec):
    """type=bool parses any value as True (defect 10): --fuse_qkv appears only when fuse_qkv is true."""
    assert "--fuse_qkv" not in command_flags(scripts()["convert"], 'python "$CONVERTER"')
    text = EXAMPLE.read_text().replace("  qkv_linear: true\n", "  qkv_linear: true\n  fuse_qkv: true\n")
    conv = command_flags(scripts(write_spec(text))["convert"], 'python "$CONVERTER"')
    assert conv["--fuse_qkv"] == "1"
    for text in scripts().values():
        assert not re.search(r"--(fuse_qkv|coalesce_qkv|load_xser|save_xser|qkv_linear)[ =](0|False|false)\b",
                             text.split("launch_ptl.py")[0])


def test_shards_counted_after_conversion_and_before_training():
    rendered = scripts()
    convert = rendered["convert"]
    after = convert.split('python "$CONVERTER"', 1)[1]
    assert "dp_rank_*_tp_rank_*_pp_rank_*.pt" in after and "if (( SHARDS != TP * PP )); then" in after
    assert "dp_rank_00_tp_rank_%02d_pp_rank_%02d.pt" in after  # every rank by name
    assert 'rm -rf "$OUT/pretrained_weight"' in convert.split('python "$CONVERTER"', 1)[0]  # no stale shards
    assert "if (( SHARDS != TP * PP )); then" in rendered["finetune"].split("torchrun --nnodes")[0]
    # the full-state file the converter loads is built from the published safetensors first (stages.md 3.1)
    assert convert.index("torch.save(state, tmp)") < convert.index('python "$CONVERTER"')


def test_lora_save_fields_are_explicit_and_cwd_is_set():
    text = scripts()["finetune"]
    body = text.split("<<'PIPELINE_LORA_EOF'\n", 1)[1].split("\nPIPELINE_LORA_EOF", 1)[0]
    fields = json.loads(body)
    assert {k: fields[k] for k in ("save_lora_base", "merge_lora", "merge_sharded_lora",
                                   "save_lora_config_adapter")} == {
        "save_lora_base": False, "merge_lora": False, "merge_sharded_lora": False, "save_lora_config_adapter": False}
    assert fields["lora_rank"] == 16 and fields["lora_alpha"] == 32
    assert fields["target_modules"] == ["qkv_proj"] and fields["lora_save_dir"] == "lora_adapter"
    launch = code(text).split("torchrun --nnodes")[0]
    assert launch.rstrip().endswith('cd "$RUN"')  # relative lora_adapter/ lands in $RUN (defect 12)
    assert "--mode adapter" in text.split("torchrun --nnodes")[1]  # saved keys inspected afterwards
    assert 'python -m stages nxd-adapter export \\\n  --adapter-dir "$WORKDIR/nxd_finetune/lora_adapter"' in (
        scripts()["export_adapter"])


@pytest.mark.parametrize("mode,expected", [
    ("base_and_lora", {"save_lora_base": True, "merge_lora": False, "merge_sharded_lora": False}),
    ("merged", {"save_lora_base": True, "merge_lora": True, "merge_sharded_lora": False}),
])
def test_save_modes(mode, expected):
    fields = nxd.NxdSettings(adapter_save_mode=mode).save_fields
    assert {k: fields[k] for k in expected} == expected and fields["save_lora_config_adapter"] is False


def test_launcher_env_and_rendezvous():
    text = scripts()["finetune"]
    torchrun = text.index("torchrun --nnodes")
    for var in ("MALLOC_ARENA_MAX=64", "NEURON_FUSE_SOFTMAX=1", "XLA_USE_BF16=1", "NEURON_CC_FLAGS=",
                "NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS=3"):
        assert -1 < text.index(f"export {var}") < text.index("exec srun"), var  # before srun and torchrun (defect 23)
    assert 'export NEURON_RT_ROOT_COMM_ID="$PIPELINE_HEAD_ADDR:48620"' in text
    assert text.index("NEURON_RT_ROOT_COMM_ID") < torchrun and text.index("FI_EFA_USE_DEVICE_RDMA=1") < torchrun
    assert "--ntasks-per-node=1" in text  # one torchrun per node (defects 8, 9)
    assert '--rdzv_endpoint="$PIPELINE_HEAD_ADDR:$PIPELINE_RDZV_PORT"' in text and "--nproc_per_node=32" in text


def test_versions_pinned_and_recorded_per_run():
    text = scripts()["create_env"]
    for pin in ("transformers==4.48.0", "datasets<=3.6.0", "lightning==2.4.0", "pytorch-lightning==2.4.0",
                "neuronx-distributed==", "torch-neuronx==", "neuronx-cc=="):
        assert pin in text, pin
    assert "git+" not in text  # never a moving branch (defect 20)
    assert 'python -m pip freeze > "$PIPELINE_RUN_DIR/pip-freeze.txt"' in text.split("\nfi\n")[-1]


@pytest.mark.parametrize("settings,message", [
    ({"kv_replicator": 2}, "num_kv_heads x kv_replicator must equal tensor_parallel_size: 8 x 2 != 32"),
    ({"tensor_parallel_size": 12, "qkv_linear": False, "kv_replicator": 1}, "does not divide the 32 NeuronCores"),
    ({"adapter_save_mode": "merged", "merge_sharded_lora": True}, "silently forces save_lora_base"),
    ({"merge_sharded_lora": True}, "NxD 2.28 cuts the gathered qkv_proj lora_B (q rows included) to 1/4"),
    ({"seq_len": 4096}, "packs every sample into 2048-token chunks"),
    ({"lora": {"target_modules": ["q_proj", "v_proj"]}}, "do not exist in the NxD model"),
    ({"qkv_linear": False, "kv_replicator": 4}, "kv_replicator only applies with qkv_linear"),
    ({"pipeline_parallel_size": 2}, "Input should be 1"),
])
def test_inconsistent_settings_are_refused(settings, message, write_spec):
    body = json.dumps(settings)
    path = write_spec(f"""
        name: p
        family: nxd
        venv: /v
        settings: {body}
        stages:
          - {{name: convert, kind: convert}}
          - {{name: finetune, kind: finetune}}
    """)
    with pytest.raises(SpecError, match=re.escape(message)):
        loader.load(path)


@pytest.mark.parametrize("settings,stages,message", [
    ({}, ["finetune"], "add a `convert` stage before it, or set settings.pretrained_ckpt"),
    ({"pretrained_ckpt": "/fsx/ck"}, ["convert", "finetune"], "pretrained_ckpt is set but the pipeline also converts"),
    ({"adapter_save_mode": "merged"}, ["convert", "finetune", "export_adapter"], "export_adapter needs adapter_save_mode"),
    ({"instance_type": "trn2.48xlarge", "tensor_parallel_size": 64, "kv_replicator": 8}, ["convert", "finetune", "export_adapter"],
     "export_adapter reads saves made on trn1 only"),
    ({"qkv_linear": False, "kv_replicator": 1, "fuse_qkv": True}, ["convert", "finetune", "export_adapter"],
     "cannot unpick a fused qkv_proj without qkv_linear"),
    ({"lora": {"target_modules": ["qkv_proj", "gate_up_proj"]}}, ["convert", "finetune", "export_adapter"],
     "cannot unpick gate_up_proj"),
    ({}, ["convert", "finetune", "export_adapter", "merge", "evaluate"], "evaluate needs a `prepare_data` stage"),
    ({}, ["prepare_data", "convert", "finetune", "export_adapter", "evaluate"], "evaluate needs a `merge` stage"),
    ({"global_batch_size": 3, "tensor_parallel_size": 8, "qkv_linear": False, "kv_replicator": 1},
     ["convert", "finetune"], "not a multiple of micro_batch_size 1 x data parallel 4"),
])
def test_inconsistent_pipelines_are_refused(settings, stages, message, write_spec):
    lines = "\n".join(f"  - {{name: {s}, kind: {s}}}" for s in stages)
    path = write_spec(f"name: p\nfamily: nxd\nvenv: /v\nsettings: {json.dumps(settings)}\nstages:\n{lines}\n")
    with pytest.raises(SpecError, match=re.escape(message)):
        loader.load(path)


def test_finetune_from_a_given_checkpoint_skips_convert(write_spec):
    path = write_spec("""
        name: p
        family: nxd
        venv: /v
        settings: {pretrained_ckpt: /fsx/ck/llama3_8b_tp32, qkv_linear: false, kv_replicator: 1, global_batch_size: 8}
        stages:
          - {name: finetune, kind: finetune, resources: {nodes: 2}}
    """)
    text = scripts(path)["finetune"]
    assert "PRETRAINED=/fsx/ck/llama3_8b_tp32\n" in text
    flags = command_flags(text, '"$RUN/launch_ptl.py" "$TRAINER"')
    assert flags["--qkv_linear"] == "0" and flags["--kv_replicator"] == "1"
    assert flags["--grad_accum_usteps"] == "4"  # 8 global / (1 micro x 2 nodes x 32 cores / TP 32)
    assert json.loads(text.split("<<'PIPELINE_LORA_EOF'\n")[1].split("\n")[0])["target_modules"] == [
        "q_proj", "v_proj", "k_proj"]


def test_held_out_rows_are_kept_from_the_trainer_and_evaluated():
    """prepare_data writes the trainer's --data_dir as a load_from_disk folder with a "train" split (what NxD 2.28's
    create_instruction_based_dataset reads from a directory, fixture data) without the rows evaluate holds out of
    task_rows.jsonl with the same fraction and seed; evaluate compares merged vs base and is the verdict."""
    rendered = scripts()
    assert FACTS["data"]["local_dir_split"] == "train" and FACTS["data"]["filter_column"] == "category"
    prep = command_flags(rendered["prepare_data"], "python -m stages nxd-data")
    fetch = command_flags(rendered["prepare_data"], "python -m stages fetch-data")
    assert fetch["--source"] == "hf://datasets/databricks/databricks-dolly-15k" and fetch["--format"] == "dolly"
    assert prep["--train-dir"] == "$WORKDIR/data/nxd_train" and prep["--task"] == "open_qa"
    train = command_flags(rendered["finetune"], TRAINER_MARKER)
    assert train["--data_dir"] == prep["--train-dir"] and train["--task"] == prep["--task"]
    assert '"$WORKDIR/data/nxd_train/dataset_dict.json"; do' in rendered["finetune"]  # checked before launch
    ev = command_flags(rendered["evaluate"], "python -m stages evaluate")
    assert ev["--data"] == prep["--rows"] == "$WORKDIR/data/task_rows.jsonl"
    assert ev["--eval-fraction"] == prep["--eval-fraction"] == "0.05" and ev["--seed"] == prep["--seed"] == "42"
    assert ev["--model"] == "$WORKDIR/final_model_output" and ev["--max-loss-ratio"] == "0.98"
    assert ev["--compare-to"] == "$WORKDIR/model_artifacts/Meta-Llama-3-8B"
    assert ev["--format"] == "dolly" and ev["--report"] == "$WORKDIR/reports/evaluate.json"
    stages_ = {s.name: s for s in plan.build(loader.load(EXAMPLE)).stages}
    assert stages_["evaluate"].after == ("merge",) and stages_["inference"].after == ("evaluate",)
    assert "reports/evaluate.json" in stages_["evaluate"].outputs


def test_without_prepare_data_the_trainer_reads_data_dir(write_spec):
    path = write_spec("""
        name: p
        family: nxd
        venv: /v
        settings: {data_dir: /fsx/my-dolly-dir}
        stages:
          - {name: convert, kind: convert}
          - {name: finetune, kind: finetune}
    """)
    assert command_flags(scripts(path)["finetune"], TRAINER_MARKER)["--data_dir"] == "/fsx/my-dolly-dir"


def test_finetune_must_wait_for_convert(write_spec):
    path = write_spec("""
        name: p
        family: nxd
        venv: /v
        stages:
          - {name: convert, kind: convert}
          - {name: finetune, kind: finetune, after: []}
    """)
    with pytest.raises(SpecError, match="finetune does not wait for 'convert'"):
        loader.load(path)


def test_hostile_values_are_quoted(write_spec, tmp_path):
    marker = tmp_path / "MARKER"
    path = write_spec(f"""
        name: p
        family: nxd
        venv: "/tmp/v; touch {marker}"
        workdir: "{tmp_path}/w $(touch {marker})"
        settings:
          model_id: "x/`touch {marker}`"
          nxd_examples_dir: "/n'x $(touch {marker})"
          task: "a b; touch {marker}"
        stages:
          - {{name: download, kind: download}}
          - {{name: prepare_data, kind: prepare_data}}
          - {{name: convert, kind: convert}}
          - {{name: finetune, kind: finetune}}
          - {{name: export_adapter, kind: export_adapter}}
          - {{name: merge, kind: merge}}
          - {{name: evaluate, kind: evaluate}}
    """)
    for name, text in scripts(path).items():
        script = tmp_path / f"{name}.sh"
        script.write_text(text)
        assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
        subprocess.run(["bash", str(script)], env={"PIPELINE_RUN_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
                       capture_output=True, timeout=30, check=False)
    assert not marker.exists()
