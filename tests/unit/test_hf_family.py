"""The hf family's evaluate stage: the optional lm_eval run renders as quoted flags, absent by default."""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import loader, plan
from orchestrator.errors import SpecError
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "tiny-llama-local.yaml"
DEFAULT_PARAMS = "params: {max_loss_ratio: 0.95}"


def evaluate_script(path: Path) -> str:
    return {s.name: s.script for s in plan.build(loader.load(path)).stages}["evaluate"]


def evaluate_argv(script: str) -> list[str]:
    """The `python -m stages evaluate ...` command as the shell will split it (continuation lines joined)."""
    command = script[script.index("python -m stages evaluate"):].replace("\\\n", " ")
    return shlex.split(command.splitlines()[0])


def with_params(write_spec: Callable[[str, str], Path], params: str) -> Path:
    """The tiny example with other evaluate params, in a temporary folder (rendering reads no data)."""
    text = EXAMPLE.read_text(encoding="utf-8")
    assert text.count(DEFAULT_PARAMS) == 1
    return write_spec(text.replace(DEFAULT_PARAMS, params), "pipeline.yaml")


def test_default_evaluate_script_has_no_lm_eval():
    script = evaluate_script(EXAMPLE)
    assert "lm-eval" not in script and "lm_eval" not in script
    assert '  --max-loss-ratio 0.95 \\\n  --dtype fp32 \\\n  --report "$WORKDIR/reports/evaluate.json"\n' in script
    argv = evaluate_argv(script)
    assert argv[-2:] == ["--report", "$WORKDIR/reports/evaluate.json"]


def test_lm_eval_flags_are_quoted_and_only_added(write_spec):
    hostile = "x'$(touch${IFS}/tmp/PIPELINE_MARKER)`id`;|&\"*"  # task names cannot hold whitespace
    lm_eval = (f"{{tasks: [dolly_tiny, {json.dumps(hostile)}], include_path: 'my tasks', limit: 5, "
               "num_fewshot: 2, batch_size: 3}")
    path = with_params(write_spec, f"params: {{max_loss_ratio: 0.95, lm_eval: {lm_eval}}}")
    script = evaluate_script(path)
    tasks_dir = f"{path.parent.resolve()}/my tasks"  # relative: the spec's folder, like settings.data
    assert f"  --lm-eval-tasks dolly_tiny {shlex.quote(hostile)} \\\n" in script
    assert f"  --lm-eval-include-path {shlex.quote(tasks_dir)} \\\n" in script
    assert "  --lm-eval-limit 5 \\\n  --lm-eval-num-fewshot 2 \\\n  --lm-eval-batch-size 3 \\\n" in script
    argv = evaluate_argv(script)
    at = argv.index("--lm-eval-tasks")
    assert argv[at:at + 3] == ["--lm-eval-tasks", "dolly_tiny", hostile]  # one word each, nothing executed
    assert argv[argv.index("--lm-eval-include-path") + 1] == tasks_dir
    assert argv[-2:] == ["--report", "$WORKDIR/reports/evaluate.json"]
    # Exactly the default script plus the lm_eval lines: nothing else moves when the option is used.
    default = evaluate_script(with_params(write_spec, DEFAULT_PARAMS))
    assert "\n".join(line for line in script.splitlines() if "--lm-eval-" not in line) == default.rstrip("\n")
    checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30,
                             check=False)
    assert checked.returncode == 0, checked.stderr


def test_lm_eval_minimal_and_absolute_include_path(write_spec):
    path = with_params(write_spec, "params: {lm_eval: {tasks: [hellaswag], include_path: /opt/tasks}}")
    argv = evaluate_argv(evaluate_script(path))
    at = argv.index("--lm-eval-tasks")
    assert argv[at:at + 6] == ["--lm-eval-tasks", "hellaswag", "--lm-eval-include-path", "/opt/tasks",
                               "--lm-eval-batch-size", "1"]
    assert "--lm-eval-limit" not in argv and "--lm-eval-num-fewshot" not in argv
    no_include = with_params(write_spec, "params: {lm_eval: {tasks: [hellaswag]}}")
    assert "--lm-eval-include-path" not in evaluate_argv(evaluate_script(no_include))


@pytest.mark.parametrize("lm_eval,message", [
    ("{tasks: []}", "at least 1 item"),
    ("{include_path: x}", "tasks"),
    ("{tasks: [-x]}", "should match pattern"),
    ("{tasks: ['a b']}", "should match pattern"),
    ("{tasks: [t], limit: 0}", "greater than 0"),
    ("{tasks: [t], num_fewshot: -1}", "greater than or equal to 0"),
    ("{tasks: [t], batch_size: 0}", "greater than 0"),
    ("{tasks: [t], device: cuda}", "device"),
])
def test_bad_lm_eval_params_name_the_key(write_spec, lm_eval, message):
    path = with_params(write_spec, f"params: {{lm_eval: {lm_eval}}}")
    with pytest.raises(SpecError) as err:
        loader.load(path)
    text = str(err.value)
    assert message in text and "lm_eval" in text and f"{path}:" in text


QLORA_EXAMPLE = REPO / "examples" / "llama3-70b-fsdp-qlora-gpu.yaml"


def stage_script(path: Path, name: str) -> str:
    return {s.name: s.script for s in plan.build(loader.load(path)).stages}[name]


def test_evaluate_runs_in_the_training_dtype():
    """stages/evaluate.py: on GPUs in this dtype (device_map="auto"), on a CPU always float32 (issue 10 defect 6)."""
    assert "--dtype bf16" in stage_script(QLORA_EXAMPLE, "evaluate")
    assert "--dtype fp32" in evaluate_script(EXAMPLE)


def test_finetune_offload_and_checkpointing_flags_only_when_set(write_spec):
    script = stage_script(QLORA_EXAMPLE, "finetune")
    assert "--method qlora --fsdp --gradient-checkpointing \\" in script and "--cpu-offload" not in script
    text = QLORA_EXAMPLE.read_text(encoding="utf-8").replace("  fsdp: true\n", "  fsdp: true\n  cpu_offload: true\n")
    offloaded = stage_script(write_spec(text, "pipeline.yaml"), "finetune")
    assert "--method qlora --fsdp --cpu-offload --gradient-checkpointing \\" in offloaded
    assert "--cpu-offload" not in stage_script(EXAMPLE, "finetune")


def test_cpu_offload_needs_fsdp(write_spec):
    text = EXAMPLE.read_text(encoding="utf-8").replace("  method: lora\n", "  method: lora\n  cpu_offload: true\n")
    with pytest.raises(SpecError, match=r"pipeline.yaml:\d+: settings: .*cpu_offload: true needs fsdp: true"):
        loader.load(write_spec(text, "pipeline.yaml"))
