"""A sweep on the local backend, for real: the shared stage once, each variant's chain paired task by task (a failed
variant cancels only its own dependents, as aftercorr + --kill-on-invalid-dep do on Slurm), SLURM_ARRAY_TASK_ID
set as on Slurm, the status matrix with the evaluations compared, and rerun of one variant."""

from __future__ import annotations

import json

import pytest

from orchestrator import state
from orchestrator.states import JobState
from tests.conftest import REPO
from tests.helpers import latest_run, run_cli, wait_terminal

S = JobState


def test_local_sweep_pairs_variants_compares_evaluations_and_reruns_one(write_spec, tmp_path, capsys):
    flag = tmp_path / "v1-failed-once"
    # evaluate writes the report layout of stages/evaluate.py (tuned/base loss, ratio, verdict); its "loss" is
    # computed from the variant's lr so each variant reports a different number
    path = write_spec(f"""
        name: lsweep
        stages:
          - {{name: download, kind: command, run: "echo weights > model.txt", outputs: [model.txt]}}
          - name: finetune
            kind: command
            params: {{lr: 1, fail: 0}}
            run: |
              echo "task ${{SLURM_ARRAY_TASK_ID:-none}} of array ${{SLURM_ARRAY_JOB_ID:-none}}, variant $PIPELINE_VARIANT"
              if [ "$PARAM_FAIL" = 1 ] && [ ! -f {flag} ]; then touch {flag}; exit 3; fi
              cat model.txt > adapter.txt; echo "$PARAM_LR" >> adapter.txt
            outputs: [adapter.txt]
          - name: evaluate
            kind: command
            run: |
              mkdir -p reports
              lr=$(tail -1 adapter.txt)
              python3 -c "import json,sys; l=abs(float(sys.argv[1])-2)/4+0.1; json.dump({{'tuned': {{'loss': l}}, 'base': {{'loss': 1.0}}, 'loss_ratio': l, 'passed': l < 0.5}}, open('reports/evaluate.json', 'w'))" "$lr"
            outputs: [reports/evaluate.json]
        sweep:
          variants:
            - {{name: low, stages.finetune.params.lr: 0.5}}
            - {{name: mid, stages.finetune.params.lr: 2, stages.finetune.params.fail: 1}}
            - {{name: high, stages.finetune.params.lr: 5}}
    """)
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    states = wait_terminal(run_dir, timeout=120)
    assert states == {"download": S.COMPLETED, "finetune@low": S.COMPLETED, "finetune@mid": S.FAILED,
                      "finetune@high": S.COMPLETED, "evaluate@low": S.COMPLETED, "evaluate@mid": S.CANCELLED,
                      "evaluate@high": S.COMPLETED}
    log = next((run_dir / "logs").glob("finetune@high.*.log")).read_text()
    assert "task 2 of array" in log and "variant high" in log
    assert run_cli("rerun", run_dir.name, "--variant", "mid") == 0
    assert set(wait_terminal(run_dir, timeout=120).values()) == {S.COMPLETED}
    saved = state.Store(run_dir).read()
    assert [len(saved.stages[n].attempts) for n in ("download", "finetune@low", "finetune@mid")] == [1, 1, 2]
    capsys.readouterr()
    assert run_cli("status", run_dir.name) == 0
    out = capsys.readouterr().out
    assert "sweep: 3 variants x 2 per-variant stages" in out
    best = [line for line in out.splitlines() if line.startswith("*")]
    assert len(best) == 1 and best[0].split()[1] == "mid"  # |2-2|/4+0.1 = 0.1, the lowest
    assert run_cli("status", run_dir.name, "--json") == 0
    data = json.loads(capsys.readouterr().out)["sweep"]
    assert {r["variant"]: round(r["tuned_loss"], 3) for r in data["evaluations"]} == {"low": 0.475, "mid": 0.1,
                                                                                       "high": 0.85}


@pytest.mark.slow
def test_tiny_llama_learning_rate_sweep_with_the_real_hf_stages(write_spec, capsys):
    """examples/tiny-llama-local.yaml (real CPU training through the hf family's stage programs) swept over two
    learning rates: download runs once and its model is linked into each variant's folder; each variant's
    finetune, consolidate, merge and evaluate run in variants/<v>/; the two real evaluate reports
    (stages/evaluate.py) are compared in status with the lower tuned loss marked."""
    text = (REPO / "examples" / "tiny-llama-local.yaml").read_text()
    text = text.replace("data: data/dolly-tiny.jsonl", f"data: {REPO / 'examples' / 'data' / 'dolly-tiny.jsonl'}")
    text = text.replace("max_steps: 120", "max_steps: 20").replace("save_steps: 40", "save_steps: 10")
    text = text.replace("max_loss_ratio: 0.95", "max_loss_ratio: 1.01")
    text = "\n".join(line for line in text.splitlines() if "kind: inference" not in line)
    text += "\nsweep:\n  variants:\n    - {name: hi, settings.learning_rate: 1.0e-2}\n" \
            "    - {name: lo, settings.learning_rate: 1.0e-6}\n"
    assert run_cli("submit", str(write_spec(text))) == 0
    run_dir = latest_run()
    states = wait_terminal(run_dir, timeout=900)
    assert set(states.values()) == {S.COMPLETED}, states
    assert sorted(states) == sorted(["download"] + [f"{s}@{v}" for s in ("finetune", "consolidate", "merge",
                                                                          "evaluate") for v in ("hi", "lo")])
    work = run_dir / "work"
    assert (work / "variants" / "hi" / "model").is_symlink() and (work / "model").is_dir()
    reports = {v: json.loads((work / "variants" / v / "reports" / "evaluate.json").read_text()) for v in ("hi", "lo")}
    assert reports["hi"]["tuned"]["loss"] < reports["lo"]["tuned"]["loss"]
    assert (work / "variants" / "lo" / "merged" / "model.safetensors").is_file()
    capsys.readouterr()
    assert run_cli("status", run_dir.name) == 0
    best = [line for line in capsys.readouterr().out.splitlines() if line.startswith("*")]
    assert len(best) == 1 and best[0].split()[1] == "hi"
