"""merge, evaluate and inference for real under the transformers (and peft) that each Trainium env pins.

Every stage program must work with the transformers of the env it runs in (issue 9, item 9): the nxd env pins
transformers==4.48.0 (NxD 2.28's examples/training/llama/requirements.txt), which knows only `torch_dtype`; the
optimum-neuron gen2 env gets whatever optimum-neuron's pin allows. The pins are read from the rendered create_env
scripts of the two examples, so a pin change there is what is tested here: an explicit `transformers==X` is used
as is, otherwise the lowest release the env's `optimum-neuron==V` accepts (its wheel's Requires-Dist), and peft
likewise. transformers and peft are installed with pip --no-deps into a private folder (cached in the venv),
plus whichever of their own requirements this venv does not satisfy (tokenizers for 4.48), and put first on
PYTHONPATH over the venv's CPU torch. The tiny model is the session's, built with the venv's transformers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from orchestrator import loader, plan
from tests.conftest import REPO
from tests.stages.conftest import DATA
from tests.stages.test_nxd_adapter import nxd_save

pytestmark = pytest.mark.slow
CACHE = Path(sys.prefix) / "pins-cache"
NOT_OURS = {"torch", "transformers"}  # the venv's torch is used; transformers is the one pinned


def create_env(example: str) -> str:
    stages = plan.build(loader.load(REPO / "examples" / example)).stages
    return next(s.script for s in stages if s.kind == "create_env")


def pinned(script: str, name: str) -> str | None:
    match = re.search(rf"(?<![\w.-]){re.escape(name)}==([0-9][\w.]*)", script)
    return match.group(1) if match else None


def wheel(name: str, version: str) -> Path:
    wheels = CACHE / "wheels"
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(wheels.glob(pattern))
    if not found:
        out = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels),
                              f"{name}=={version}"], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        found = sorted(wheels.glob(pattern))
    assert found, f"no wheel {pattern} in {wheels}"
    return found[0]


def requires(whl: Path, extras: tuple[str, ...] = ()) -> list[Requirement]:
    with zipfile.ZipFile(whl) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(name).decode().splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras)
            or (r.marker.evaluate({"extra": ""}) and "extra" not in str(r.marker))]


def lowest(req: Requirement) -> str:
    """The lowest release a specifier admits by its own bound (==X, ~=X, >=X)."""
    bounds = [s.version for s in req.specifier if s.operator in ("==", "~=", ">=")]
    assert bounds, f"{req}: no lower bound to test"
    return str(max(Version(b) for b in bounds))


def env_pins(example: str) -> tuple[str, str]:
    """(transformers, peft) versions the example's create_env installs."""
    script = create_env(example)
    transformers, peft = pinned(script, "transformers"), pinned(script, "peft")
    if transformers is None or peft is None:
        match = re.search(r"optimum-neuron(?:\[([\w,]+)\])?==([0-9][\w.]*)", script)
        assert match, f"{example}: create_env pins neither transformers nor optimum-neuron"
        extras = tuple((match.group(1) or "").split(",")) if match.group(1) else ()
        reqs = {r.name: r for r in requires(wheel("optimum-neuron", match.group(2)), extras)}
        transformers = transformers or lowest(reqs["transformers"])
        peft = peft or lowest(reqs["peft"])
    return transformers, peft


def missing_requirements(*wheels: Path) -> list[str]:
    """Requirements of these wheels the venv does not satisfy (installed beside them, without deps)."""
    out = []
    for whl in wheels:
        for req in requires(whl):
            if req.name in NOT_OURS or req.name == "peft":
                continue
            try:
                have = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                have = None
            if have is None or not req.specifier.contains(have, prereleases=True):
                out.append(str(req).split(";")[0])
    return out


def site_for(transformers: str, peft: str) -> Path:
    site = CACHE / f"site-transformers-{transformers}-peft-{peft}"
    marker = site / ".complete"
    if not marker.is_file():
        wheels = [wheel("transformers", transformers), wheel("peft", peft)]
        extra = missing_requirements(*wheels)
        out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target",
                              str(site), *map(str, wheels), *extra], capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"could not install {wheels} {extra}:\n{out.stderr[-2000:]}"
        marker.write_text(json.dumps({"transformers": transformers, "peft": peft, "extra": extra}))
    return site


def run(site: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{argv[:3]} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return out


PINS = {"nxd": "llama3-8b-nxd-tp-lora-trn1.yaml", "gen2": "llama3-8b-trn1.yaml"}


def test_the_pins_are_read_from_the_rendered_envs():
    """nxd: transformers==4.48.0 and peft==0.14.0 (as NxD 2.28's requirements.txt and its LoRA test script pin);
    gen2: from optimum-neuron 0.4.5 (transformers~=4.57.1, peft==0.17.0 for [training]) unless pinned."""
    assert env_pins(PINS["nxd"]) == ("4.48.0", "0.14.0")
    transformers, peft = env_pins(PINS["gen2"])
    assert Version(transformers) >= Version("4.57.1") and Version(peft) >= Version("0.17.0")
    # Explicit gen2 pins must be ones the pinned optimum-neuron accepts (its wheel's Requires-Dist).
    script = create_env(PINS["gen2"])
    match = re.search(r"optimum-neuron(?:\[([\w,]+)\])?==([0-9][\w.]*)", script)
    assert match
    reqs = {r.name: r for r in requires(wheel("optimum-neuron", match.group(2)), ("training",))}
    assert reqs["transformers"].specifier.contains(transformers) and reqs["peft"].specifier.contains(peft)


@pytest.mark.parametrize("family", sorted(PINS))
def test_merge_evaluate_inference_under_the_env_pin(family, tiny, tmp_path):
    transformers, peft = env_pins(PINS[family])
    site = site_for(transformers, peft)
    got = run(site, "-c", "import transformers, peft; print(transformers.__version__, peft.__version__)")
    assert got.stdout.split() == [transformers, peft]  # the pinned ones, not the venv's

    nxd_save(tmp_path / "lora_adapter", tiny)  # a TP-4 NxD save, as the nxd finetune leaves it
    run(site, "-m", "stages", "nxd-adapter", "export", "--adapter-dir", str(tmp_path / "lora_adapter"),
        "--base-model", str(tiny), "--base-model-id", "tiny/llama", "--output", str(tmp_path / "adapter"),
        "--tp-size", "4", "--kv-replicator", "2")
    merged = run(site, "-m", "stages", "merge", "--base", str(tiny), "--adapter", str(tmp_path / "adapter"),
                 "--output", str(tmp_path / "merged"), "--dtype", "bf16")
    assert "probe:" in merged.stdout and (tmp_path / "merged" / "config.json").is_file()

    run(site, "-m", "stages", "evaluate", "--model", str(tmp_path / "merged"), "--compare-to", str(tiny),
        "--data", str(DATA), "--format", "dolly", "--eval-fraction", "0.1", "--seq-len", "128",
        "--exact-match-rows", "2", "--max-loss-ratio", "100", "--report", str(tmp_path / "evaluate.json"))
    report = json.loads((tmp_path / "evaluate.json").read_text())
    assert report["tuned"]["model"] == str(tmp_path / "merged") and report["base"]["model"] == str(tiny)
    assert report["tuned"]["eval_rows"] > 0 and report["base"]["loss"] > 0 and report["passed"] is True
    assert report["tuned"]["loss"] != report["base"]["loss"]  # the merged adapter is in the weights

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["What is 2 plus 2?", "Name a colour."]))
    run(site, "-m", "stages", "inference", "--base", str(tiny), "--model", str(tmp_path / "merged"), "--prompts",
        str(prompts), "--system-prompt", "You are a helpful assistant.", "--max-new-tokens", "8",
        "--report", str(tmp_path / "inference.json"))
    rows = json.loads((tmp_path / "inference.json").read_text())["generations"]
    assert [r["prompt"] for r in rows] == ["What is 2 plus 2?", "Name a colour."]
    assert all(isinstance(r["base"], str) and isinstance(r["tuned"], str) for r in rows)
