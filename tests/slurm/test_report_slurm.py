"""`pipeline report` and notifications on the real Slurm test cluster (slurmctld, slurmd x4, slurmdbd): the
resource table comes from one batched sacct call, and the job wrapper on a compute node posts the webhook."""

from __future__ import annotations

import os
import sys

import pytest

from orchestrator import proc, report, state
from orchestrator.scheduler.slurm import USAGE_FIELDS
from tests.helpers import latest_run, run_cli, wait_accounted, wait_terminal
from tests.report.test_notify import Hook, hook, secret_file  # noqa: F401 (the loopback webhook fixture)

pytestmark = pytest.mark.slurm
CLUSTER = '{name: dev, scheduler: slurm, hyperpod: "off", defaults: {time: "00:10:00"}, node_hour_price: {default: 2.0}}'
BURN = "import time; x = bytearray(64 << 20); t = time.time()\nwhile time.time() - t < 3: pass"


def test_report_and_webhook_on_slurm(slurm_cluster, write_spec, tmp_path, monkeypatch, hook):  # noqa: F811
    _, url = hook
    (tmp_path / "burn.py").write_text(BURN)
    path = write_spec(f"""name: acct
cluster: {CLUSTER}
secrets: {{HOOK: {{file: {secret_file(tmp_path, url)}}}}}
notify: {{webhook: HOOK}}
stages:
  - name: wide
    kind: command
    resources: {{nodes: 2}}
    run: srun --ntasks-per-node=1 {sys.executable} {tmp_path / "burn.py"}
  - {{name: bad, kind: command, run: "exit 5"}}
  - {{name: never, kind: command, run: "true"}}
""")
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    states = wait_terminal(run_dir, timeout=240)
    assert [s.value for s in states.values()] == ["COMPLETED", "FAILED", "CANCELLED"]
    # The report reads accounting (sacct), which slurmdbd fills in a moment after the controller (seconds in CI
    # under load): a stage status saw end from the controller alone may not be in sacct yet.
    jobs = [s.current.job_id for s in state.Store(run_dir).read().stages.values()]
    assert wait_accounted(jobs) == dict(zip(jobs, ["COMPLETED", "FAILED", "CANCELLED"]))

    calls: list[list[str]] = []
    real = proc.run

    def counting(argv, **kwargs):  # a spy on the one subprocess wrapper: the real sacct still runs
        calls.append(list(argv))
        return real(argv, **kwargs)

    monkeypatch.setattr(proc, "run", counting)
    rep = report.collect(run_dir)
    assert sum(1 for argv in calls if argv[0] == "sacct" and USAGE_FIELDS in argv) == 1
    use = {u.stage: u for u in rep.usage}
    wide = use["wide"]
    assert wide.nodes == 2 and wide.elapsed_s >= 3
    assert abs(wide.node_hours - wide.elapsed_s * 2 / 3600) < 1e-9 and abs(wide.cost - wide.node_hours * 2.0) < 1e-9
    assert wide.cpu_efficiency is not None and 0 < wide.cpu_efficiency <= 1
    assert use["never"].node_hours == 0  # cancelled before it ran: no hours
    outcomes = {(s.stage, s.kind): s.outcome for s in rep.spans}
    assert outcomes[("bad", "running")] == "FAILED" and outcomes[("never", "pending")] == "CANCELLED"
    page, _ = report.write(run_dir, tmp_path / "rep")
    assert "wide" in page.read_text()

    texts = [m["text"] for m in Hook.received]
    assert any("stage bad" in t and "failed: script exited 5" in t for t in texts), texts
    assert any("run ended with failures" in t for t in texts), texts
    assert url not in "\n".join(p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file())
    print(os.linesep.join(f"{u}" for u in rep.usage))
