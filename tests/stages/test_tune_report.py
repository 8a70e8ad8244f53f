"""`python -m stages tune-report`: eleuther_eval's and generate's results, from the logs torchtune 0.6.1's recipes
write (they write no result file). The eval table is made by lm_eval 0.4.8's own `make_table` (the function
recipes/eleuther_eval.py logs), the generate log in the layout of torchtune's logger; the real recipes' logs are
parsed in tests/stages/test_torchtune_recipes.py."""

from __future__ import annotations

import json

from tests.stages.conftest import stage

RESULTS = {"results": {"dolly_tiny": {"alias": "dolly_tiny", "acc,none": 0.25, "acc_stderr,none": 0.25,
                                      "perplexity,none": 123.4, "perplexity_stderr,none": "N/A"},
                       "truthfulqa_mc2": {"alias": "truthfulqa_mc2", "acc,none": 0.5, "acc_stderr,none": 0.01}},
           "versions": {"dolly_tiny": 1.0, "truthfulqa_mc2": 2.0}, "n-shot": {"dolly_tiny": 0, "truthfulqa_mc2": 0},
           "higher_is_better": {"dolly_tiny": {"acc": True, "perplexity": False}, "truthfulqa_mc2": {"acc": True}}}


def eval_log(tmp_path):
    from lm_eval.utils import make_table

    log = tmp_path / "eleuther_eval.log"
    log.write_text("INFO:torchtune.utils._logging:Eval completed in 3.10 seconds.\n"
                   f"INFO:torchtune.utils._logging:\n\n{make_table(RESULTS)}\n\n")
    return log


def test_eval_metrics_and_min_score(tmp_path):
    log = eval_log(tmp_path)
    stage("tune-report", "--eval", str(log), "--output", str(tmp_path / "m.json"), "--min-score", "0.2",
          "--task", "dolly_tiny")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics == {"dolly_tiny": {"acc": 0.25, "perplexity": 123.4}, "truthfulqa_mc2": {"acc": 0.5}}
    out = stage("tune-report", "--eval", str(log), "--output", str(tmp_path / "m.json"), "--min-score", "0.3",
                "--task", "dolly_tiny", check=False)
    assert out.returncode == 2 and "dolly_tiny acc 0.2500 is below min_score 0.3" in out.stderr


def test_a_log_without_results_fails(tmp_path):
    log = tmp_path / "eleuther_eval.log"
    log.write_text("Traceback (most recent call last):\nOSError: We couldn't connect to 'https://huggingface.co'\n")
    out = stage("tune-report", "--eval", str(log), "--output", str(tmp_path / "m.json"), check=False)
    assert out.returncode == 2 and "no lm_eval results table" in out.stderr and not (tmp_path / "m.json").exists()


def test_generated_text_spans_lines(tmp_path):
    log = tmp_path / "generate.log"
    log.write_text("INFO:torchtune.utils._logging:Model is initialized with precision torch.bfloat16.\n"
                   "INFO:torchtune.utils._logging:user\n\nHello, my name isassistant\n\nBob.\nNice to meet you\n"
                   "INFO:torchtune.utils._logging:Time for inference: 0.40 sec total, 20.00 tokens/sec\n"
                   "INFO:torchtune.utils._logging:Bandwidth achieved: 0.01 GB/s\n")
    stage("tune-report", "--generated", str(log), "--output", str(tmp_path / "g.txt"))
    assert (tmp_path / "g.txt").read_text() == "user\n\nHello, my name isassistant\n\nBob.\nNice to meet you\n"
