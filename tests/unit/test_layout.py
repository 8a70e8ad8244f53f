"""The run directory has one owner (issue 12 item 1): orchestrator/layout.py's RunPaths knows every path, the
templates get theirs from the render context, and no other module joins run-directory names by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

from orchestrator import layout, loader, plan
from orchestrator.layout import RunPaths
from orchestrator.state import Store

REPO = Path(__file__).resolve().parents[2]
# a run-directory name joined onto a path by hand: `x / "records"`, `root / "plan.json"`, ...
HAND_BUILT = re.compile(r'/ "(records|logs|plan\.json|scripts|submitit|local|work|torchtune|tensorboard|wandb|'
                        r'report|plans|state\.json)"')


def test_no_module_but_layout_builds_run_paths() -> None:
    offenders = []
    for path in sorted((REPO / "orchestrator").rglob("*.py")):
        if path.name == "layout.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if HAND_BUILT.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


def test_templates_name_run_paths_only_through_the_context() -> None:
    """A template writing "$PIPELINE_RUN_DIR/<name>" itself is a second owner of the layout."""
    literal = [f"{p.relative_to(REPO)}: {line.strip()}" for p in sorted((REPO / "templates").rglob("*.j2"))
               for line in p.read_text(encoding="utf-8").splitlines() if "$PIPELINE_RUN_DIR/" in line]
    assert literal == []


def test_script_paths_are_the_run_paths_under_the_run_dir_variable(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path)
    exprs = layout.script_paths()

    def resolved(key: str) -> Path:
        assert exprs[key].startswith("$PIPELINE_RUN_DIR")  # never a literal run directory: cache keys hash scripts
        return Path(exprs[key].replace("$PIPELINE_RUN_DIR", str(tmp_path)))

    assert resolved("run_dir") == paths.root
    assert resolved("workdir") == paths.workdir(None)
    assert resolved("tune_configs") == paths.tune_configs
    for name in layout.FREEZES:
        assert resolved(f"freeze_{name}") == paths.freeze(name)


def test_job_records_sorted_by_restart_apart_from_manifests_and_metrics(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path)
    for restarts in (10, 0, 2):
        path = paths.job_record("train", "12", restarts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}", encoding="utf-8")
    paths.manifest("train", "12").parent.mkdir(parents=True)
    paths.manifest("train", "12").write_text("{}", encoding="utf-8")
    paths.metrics("train", "12").write_text("{}\n", encoding="utf-8")
    paths.job_record("train", "120", 0).write_text("{}", encoding="utf-8")  # another job whose id starts alike
    assert [p.name for p in paths.job_records("train", "12")] == ["12.0.json", "12.2.json", "12.10.json"]
    assert paths.job_record("s", "run/3", 1).name == "run_3.1.json"  # local ids hold a slash


def test_store_reads_the_saved_plan(tmp_path: Path) -> None:
    built = plan.build(loader.load(REPO / "examples" / "llama3-70b-torchtune-p5.yaml"))
    paths = RunPaths(tmp_path)
    paths.make_dirs()
    for stage in built.stages:
        paths.script(stage.name).write_text(stage.script, encoding="utf-8")


    paths.plan.write_text(json.dumps(built.to_json()), encoding="utf-8")
    assert Store(tmp_path).read_plan() == built
