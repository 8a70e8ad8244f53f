"""evaluate: held-out loss, perplexity and exact match of a model (optionally vs a base), with a verdict:
exit 3 when the tuned model's loss is not below base * --max-loss-ratio (stages.md defect 16).

Optionally (--lm-eval-tasks) also runs lm-evaluation-harness tasks on the evaluated model, offline, and adds
their metrics to the report under "lm_eval"; they are reported, never part of the verdict."""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import numbers
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages import data as datalib
from stages import tracking
from stages.common import StageError, dtype_kwargs, entry, log, metric, require_model_dir, write_json

WORSE_RC = 3
# The release whose Python API (simple_evaluate, TaskManager, results layout) this program is written against.
LM_EVAL_PIN = "lm_eval==0.4.8"


def placement(dtype_name: str) -> tuple[Any, dict[str, Any]]:
    """Where and in which dtype a model is evaluated: on a GPU node, on its GPUs in the training dtype, the layers
    spread over every visible GPU by accelerate's device_map="auto" (a 70B model in bf16 is ~141 GB, more than one
    80 GB GPU; transformers docs "Big model inference"); without a GPU, on the CPU in float32 as before."""
    import torch

    if not torch.cuda.is_available():
        return torch.float32, {}
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    return dtype, {"device_map": "auto"}


def load(model_dir: Path, args: argparse.Namespace, adapter: Path | None) -> Any:
    from transformers import AutoModelForCausalLM

    dtype, where = placement(args.dtype)
    # Any: a transformers model, or the PeftModel wrapping it.
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, **dtype_kwargs(dtype), **where)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    log(f"{model_dir.name}: evaluating in {str(dtype).replace('torch.', '')} on "
        f"{sorted({str(p.device) for p in model.parameters()})}")
    return model.eval()


def release(model: Any) -> None:
    """Free one model's GPU memory before the next is loaded (tuned, then base: never both at once)."""
    import gc

    import torch

    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure(model_dir: Path, args: argparse.Namespace, adapter: Path | None = None) -> dict[str, Any]:
    from transformers import AutoTokenizer

    require_model_dir(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load(model_dir, args, adapter)
    try:
        return _measure(model, tokenizer, model_dir, args)
    finally:
        release(model)


def _measure(model: Any, tokenizer: Any, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = model.get_input_embeddings().weight.device  # device_map="auto": the first layers' GPU
    _, held_out = datalib.load(args.data, args.format, tokenizer, args.eval_fraction, args.seed)
    if not held_out:
        raise StageError(f"{args.data}: no held-out rows to evaluate on", "raise --eval-fraction")
    total_loss, total_tokens, exact = 0.0, 0, 0
    with torch.no_grad():
        for example in held_out:
            prompt_ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
            ids = tokenizer(example.text, add_special_tokens=False)["input_ids"][: args.seq_len]
            labels = [-100] * min(len(prompt_ids), len(ids)) + ids[len(prompt_ids):]
            out = model(input_ids=torch.tensor([ids], device=device), labels=torch.tensor([labels], device=device))
            n = sum(1 for x in labels[1:] if x != -100)
            if n:
                total_loss += float(out.loss) * n
                total_tokens += n
        for example in held_out[: args.exact_match_rows]:
            prompt = tokenizer(example.prompt, return_tensors="pt", add_special_tokens=False).to(device)
            gen = model.generate(input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"], max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            answer = tokenizer.decode(gen[0][prompt["input_ids"].shape[1]:], skip_special_tokens=True)
            expected = example.answer.replace(tokenizer.eos_token or "", "")
            exact += int(answer.strip() == expected.strip())
    loss = total_loss / max(1, total_tokens)
    return {"model": str(model_dir), "eval_rows": len(held_out), "answer_tokens": total_tokens, "loss": loss,
            "perplexity": math.exp(min(loss, 50)), "exact_match": exact / max(1, min(len(held_out), args.exact_match_rows))}


@dataclass(frozen=True)
class LmEval:
    """lm_eval, imported and with its tasks resolved, before any model is loaded (a typo fails in seconds)."""

    module: Any  # the lm_eval package
    task_manager: Any  # lm_eval.tasks.TaskManager
    tasks: list[str]
    include_path: Path | None


def prepare_lm_eval(args: argparse.Namespace) -> LmEval | None:
    if not args.lm_eval_tasks:
        return None
    include = args.lm_eval_include_path.resolve() if args.lm_eval_include_path is not None else None
    if include is not None and not include.is_dir():
        raise StageError(f"{include}: --lm-eval-include-path is not a directory of lm_eval task YAMLs")
    # Jobs must not reach the network (compute nodes often cannot, and a silent download would change what is
    # measured). Set before lm_eval/datasets are imported and before measure() imports transformers, because
    # huggingface_hub and datasets read these variables once, at import time.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise StageError(f"--lm-eval-tasks needs lm-evaluation-harness, which is not importable ({exc})",
                         f"pip install {LM_EVAL_PIN}   (the project's `eval` extra)") from None
    tasks = list(dict.fromkeys(args.lm_eval_tasks))  # a task named twice would be evaluated twice
    manager = None
    if include is not None:
        # Indexing lm_eval's ~7000 built-in task YAMLs takes 15-30 s; skip it when every requested name is a
        # plain task of the include folder (a group may name built-in subtasks: groups get the full index).
        local = TaskManager(include_path=str(include), include_defaults=False)
        if set(tasks) <= set(local.all_subtasks):
            manager = local
    if manager is None:
        manager = TaskManager(include_path=str(include) if include is not None else None)
    missing = [name for name in tasks if name not in manager.all_tasks]
    if missing:
        where = "lm_eval's built-in tasks" if include is None else f"{include} or lm_eval's built-in tasks"
        raise StageError(f"lm_eval task(s) not found: {', '.join(missing)} (looked in {where})",
                         "check the names (each task YAML's `task:` key) and the spec's lm_eval.include_path")
    return LmEval(lm_eval, manager, tasks, include)


@contextmanager
def working_directory(path: Path | None) -> Iterator[None]:
    """contextlib.chdir exists only from Python 3.11; the project supports 3.10."""
    if path is None:
        yield
        return
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def json_number(value: Any) -> float | int | None:
    """A metric as JSON: ints and finite floats (numpy's too); NaN, inf and lm_eval's "N/A" become null."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value) if math.isfinite(float(value)) else None


def json_plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Real):
        return json_number(value)
    if isinstance(value, dict):
        return {str(k): json_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_plain(v) for v in value]
    return str(value)


def run_lm_eval(prepared: LmEval, model_dir: Path, adapter: Path | None,
                args: argparse.Namespace) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype, _ = placement(args.dtype)  # the dtype measure() used
    model_args: dict[str, Any] = {"pretrained": str(model_dir.resolve()), "dtype": str(dtype).replace("torch.", "")}
    if cuda and torch.cuda.device_count() > 1:
        model_args["parallelize"] = True  # lm_eval's HFLM: device_map="auto" over the visible GPUs, as measure()
    if adapter is not None:
        model_args["peft"] = str(adapter.resolve())  # the same model the loss above measured
    # lm_eval passes a task's `data_files` to datasets.load_dataset as written, and datasets resolves relative
    # paths against the process's working directory, not the YAML's folder. Running with the include folder as
    # the working directory makes relative data paths in task YAMLs mean "relative to the include folder",
    # independent of where the job runs (every other path here is absolute by now).
    with working_directory(prepared.include_path):
        raw = prepared.module.simple_evaluate(
            model="hf", model_args=model_args, tasks=prepared.tasks, task_manager=prepared.task_manager,
            num_fewshot=args.lm_eval_num_fewshot, limit=args.lm_eval_limit,
            batch_size=args.lm_eval_batch_size, device=device,
            log_samples=False)  # per-document outputs would bloat the report; the metrics are what we keep
    if raw is None:  # only non-zero ranks get None; this program runs one process
        raise StageError("lm_eval returned no results")
    tasks: dict[str, Any] = {}
    for name, metrics in raw["results"].items():
        tasks[name] = {
            # lm_eval's own keys ("acc,none" = metric,filter), so they compare with its docs and other runs.
            "metrics": {key: json_number(value) for key, value in metrics.items() if key != "alias"},
            "n_samples": json_plain(raw.get("n-samples", {}).get(name)),
            "num_fewshot": json_plain(raw.get("n-shot", {}).get(name)),
            "version": json_plain(raw.get("versions", {}).get(name)),
            "higher_is_better": json_plain(raw.get("higher_is_better", {}).get(name)),
        }
        shown = ", ".join(f"{k} {v:.4g}" for k, v in tasks[name]["metrics"].items()
                          if v is not None and "_stderr" not in k)
        log(f"lm_eval {name}: {shown}")
    include = str(prepared.include_path) if prepared.include_path is not None else None
    return {"lm_eval_version": importlib.metadata.version("lm_eval"), "model": model_args["pretrained"],
            "adapter": model_args.get("peft"), "include_path": include, "limit": args.lm_eval_limit,
            "num_fewshot": args.lm_eval_num_fewshot, "device": device, "tasks": tasks}


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


@entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stages evaluate")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--adapter", type=Path, help="evaluate base --model with this PEFT adapter")
    p.add_argument("--compare-to", type=Path, help="base model to compare against")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--format", choices=["dolly", "chat"], default="dolly")
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--exact-match-rows", type=int, default=8)
    p.add_argument("--max-loss-ratio", type=float, default=1.0)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="on GPUs: the training dtype to evaluate in (without a GPU: always float32 on the CPU)")
    p.add_argument("--report", required=True, type=Path)
    p.add_argument("--lm-eval-tasks", nargs="+", metavar="TASK",
                   help=f"also run these lm-evaluation-harness tasks on --model, offline ({LM_EVAL_PIN})")
    p.add_argument("--lm-eval-include-path", type=Path, help="a folder of lm_eval task YAMLs")
    p.add_argument("--lm-eval-limit", type=positive_int, help="evaluate at most this many documents per task")
    p.add_argument("--lm-eval-num-fewshot", type=non_negative_int)
    p.add_argument("--lm-eval-batch-size", type=positive_int, default=1)
    args = p.parse_args(argv)
    if not args.lm_eval_tasks and (args.lm_eval_include_path is not None or args.lm_eval_limit is not None
                                   or args.lm_eval_num_fewshot is not None):
        p.error("--lm-eval-include-path/--lm-eval-limit/--lm-eval-num-fewshot need --lm-eval-tasks")
    harness = prepare_lm_eval(args)  # before the loss, so a missing package or task fails fast
    report: dict[str, Any] = {"tuned": measure(args.model, args, args.adapter)}
    log(f"tuned: loss {report['tuned']['loss']:.4f} exact match {report['tuned']['exact_match']:.0%}")
    verdict = 0
    if args.compare_to is not None:
        report["base"] = measure(args.compare_to, args)
        ratio = report["tuned"]["loss"] / report["base"]["loss"]
        report.update(loss_ratio=ratio, max_loss_ratio=args.max_loss_ratio, passed=ratio < args.max_loss_ratio)
        log(f"base: loss {report['base']['loss']:.4f}; tuned/base = {ratio:.3f} (must be < {args.max_loss_ratio})")
        verdict = 0 if report["passed"] else WORSE_RC
    if harness is not None:
        report["lm_eval"] = run_lm_eval(harness, args.model, args.adapter, args)
    write_json(args.report, report)
    tracking.artifact(args.report, "reports")
    metric(event="evaluate", tuned=report["tuned"], base=report.get("base"), loss_ratio=report.get("loss_ratio"),
           passed=report.get("passed"))
    if verdict:
        print(f"error: fine-tuned loss is not below {args.max_loss_ratio} x base loss", flush=True)
    return verdict
