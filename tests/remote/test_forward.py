"""`remote.forward` against a REAL OpenSSH server on 127.0.0.1 (tests/remote/conftest.py), no mocks.

The "head node" is this machine reached over SSH; its pipeline is this checkout's .venv/bin/pipeline, run by
sshd as the login user with the test's PIPELINE_HOME passed in the remote command's environment.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from orchestrator import __version__
from orchestrator.loader import referenced_files
from orchestrator.remote import (
    FORWARDED_ENV,
    AuthError,
    HostKeyError,
    RemoteCommandError,
    Target,
    UnreachableError,
    UploadError,
    forward,
    remote_command,
)
from tests.remote.conftest import PIPELINE as PIPELINE_EXE
from tests.remote.conftest import REPO, SshServer, free_port

LOCAL_CHAIN = """
name: remote-chain
cluster: local
stages:
  - {name: one, kind: command, run: "echo hello-from-one $PARAM_INPUT", params: {input: inputs/words.txt}}
  - {name: two, kind: command, run: "echo two says $PARAM_GREETING", params: {greeting: "it's done"}}
  - {name: three, kind: command, after: [one], run: "echo three"}
"""


def uploaded_dirs(server: SshServer) -> list[Path]:
    root = server.dir / "uploads"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


def test_version_is_forwarded(sshd: SshServer, capfd: pytest.CaptureFixture[str]) -> None:
    assert forward(sshd.target(), ["--version"]) == 0
    assert capfd.readouterr().out.strip() == f"pipeline {__version__}"


def test_exit_code_and_stderr_come_back(sshd: SshServer, capfd: pytest.CaptureFixture[str]) -> None:
    assert forward(sshd.target(), ["status", "no-such-run"]) == 1
    captured = capfd.readouterr()
    assert "error:" in captured.err and "no-such-run" in captured.err
    assert captured.out == ""


def test_validate_and_render_upload_spec_and_data(
        sshd: SshServer, tmp_path: Path, write_spec: Callable[..., Path], capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"instruction": "hi", "response": "there"}\n', encoding="utf-8")
    spec = write_spec("""
        name: hf-remote
        cluster: local
        family: hf
        settings: {model_source: tiny, data: data/train.jsonl, dtype: fp32}
        stages:
          - {name: download, kind: download}
          - {name: finetune, kind: finetune}
        """)
    files = referenced_files(spec)
    assert files == [spec, (tmp_path / "data" / "train.jsonl").resolve()]
    before = set(uploaded_dirs(sshd))
    assert forward(sshd.target(), ["validate", str(spec)], files) == 0
    out = capfd.readouterr().out
    new = sorted(set(uploaded_dirs(sshd)) - before)
    assert len(new) == 1, new
    remote_spec = new[0] / "pipeline.yaml"
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", new[0].name)
    assert remote_spec.read_text() == spec.read_text()
    assert (new[0] / "data" / "train.jsonl").read_text() == (tmp_path / "data" / "train.jsonl").read_text()
    assert out.strip() == f"{remote_spec}: ok (2 stages, cluster local)"  # argv path was rewritten
    assert not list((sshd.dir / "uploads").glob(".*.partial"))

    after_validate = set(uploaded_dirs(sshd))
    assert forward(sshd.target(), ["render", str(spec)], files) == 0
    rendered = capfd.readouterr().out
    assert "pipeline hf-remote on cluster local" in rendered
    # the hf family resolves settings.data against the (remote) spec's folder
    [newest] = set(uploaded_dirs(sshd)) - after_validate
    assert str(newest / "data" / "train.jsonl") in rendered


def wait_remote(target: Target, run_id: str, capfd: pytest.CaptureFixture[str], timeout: float = 120) -> dict[str, str]:
    """Poll `pipeline status RUN --json` over SSH until every stage has ended: stage -> state."""
    deadline = time.monotonic() + timeout
    while True:
        assert forward(target, ["status", run_id, "--json"]) == 0
        text = capfd.readouterr().out
        states = {name: stage["state"] for name, stage in json.loads(text)["stages"].items()}
        if all(s in ("COMPLETED", "FAILED", "CANCELLED") for s in states.values()):
            return states
        assert time.monotonic() < deadline, text
        time.sleep(0.5)


def test_submit_status_logs_through_forwarding(
        sshd: SshServer, tmp_path: Path, write_spec: Callable[..., Path], capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "words.txt").write_text("uploaded words\n", encoding="utf-8")
    spec = write_spec(LOCAL_CHAIN)
    files = referenced_files(spec)
    assert (tmp_path / "inputs" / "words.txt").resolve() in files
    target = sshd.target()
    before = set(uploaded_dirs(sshd))
    assert forward(target, ["submit", str(spec)], files) == 0
    run_id = capfd.readouterr().out.strip().splitlines()[-1]
    assert run_id.startswith("remote-chain-")

    states = wait_remote(target, run_id, capfd)
    assert states == {"one": "COMPLETED", "two": "COMPLETED", "three": "COMPLETED"}

    assert forward(target, ["status", run_id]) == 0
    table = capfd.readouterr().out
    assert re.search(r"one\s+COMPLETED", table) and re.search(r"three\s+COMPLETED", table), table
    assert forward(target, ["logs", run_id, "one"]) == 0
    log = capfd.readouterr().out
    assert "hello-from-one inputs/words.txt" in log
    assert forward(target, ["logs", run_id, "two"]) == 0
    assert "two says it's done" in capfd.readouterr().out
    # the run lives in the PIPELINE_HOME given to the remote command (this test's)
    assert (Path(os.environ["PIPELINE_HOME"]) / "index").exists()
    [upload] = set(uploaded_dirs(sshd)) - before
    assert (upload / "inputs" / "words.txt").read_text() == "uploaded words\n"


def test_rerun_spec_uploads_the_edited_file(sshd: SshServer, tmp_path: Path, write_spec: Callable[..., Path],
                                           capfd: pytest.CaptureFixture[str]) -> None:
    """`pipeline --host H rerun RUN --spec edited.yaml`: the CLI uploads FILE (and what it references) and the head
    node re-plans from the uploaded copy. Before, only validate/render/submit uploaded their file, so the remote
    rerun was handed a path of this machine (here the "head node" is this machine, hence the check on where the
    run says its spec came from)."""
    from orchestrator import cli, state
    from orchestrator.commands import upload_path

    chain = 'name: edit\ncluster: local\nstages:\n  - {name: a, kind: command, run: "echo a"}\n' \
            '  - {name: b, kind: command, run: "echo %s"}\n'
    spec = write_spec(chain % "first")
    target = sshd.target()
    assert forward(target, ["submit", str(spec)], referenced_files(spec)) == 0
    run_id = capfd.readouterr().out.strip().splitlines()[-1]
    assert wait_remote(target, run_id, capfd) == {"a": "COMPLETED", "b": "COMPLETED"}
    edited = tmp_path / "edited.yaml"
    edited.write_text(chain % "second", encoding="utf-8")
    argv = ["rerun", run_id, "--spec", str(edited)]
    upload = upload_path(cli.build_parser().parse_args(argv))
    assert upload == edited
    assert forward(target, argv, referenced_files(upload)) == 0
    replanned = capfd.readouterr()
    assert f"b: {run_id}/" in replanned.out and "(spec 2;" in replanned.out, replanned
    assert wait_remote(target, run_id, capfd) == {"a": "COMPLETED", "b": "COMPLETED"}
    saved = state.Store(state.find_run(run_id)).read()
    assert saved.spec_version == 2 and Path(saved.spec_source).is_relative_to(sshd.dir / "uploads"), saved.spec_source
    assert Path(saved.spec_source).read_text(encoding="utf-8") == edited.read_text(encoding="utf-8")
    assert forward(target, ["logs", run_id, "b"]) == 0
    assert "second" in capfd.readouterr().out


def test_remote_command_quotes_every_word() -> None:
    target = Target(host="h", pipeline="~/venv/bin/pipeline", env={"PIPELINE_HOME": "/x y"})
    command = remote_command(target, ["submit", "a b; rm -rf /", "$(id)"], "/home/u", cwd="/up/it's")
    assert command == ("cd '/up/it'\"'\"'s' && env PIPELINE_FORWARDED=1 'PIPELINE_HOME=/x y' "
                       "/home/u/venv/bin/pipeline submit 'a b; rm -rf /' '$(id)'")
    assert FORWARDED_ENV in command


def test_argv_with_shell_metacharacters_reaches_remote_verbatim(
        sshd: SshServer, capfd: pytest.CaptureFixture[str]) -> None:
    assert forward(sshd.target(), ["status", "x; touch /tmp/pwned-$(id -u) 'q'"]) == 1
    assert "x; touch /tmp/pwned-$(id -u) 'q'" in capfd.readouterr().err
    assert not Path(f"/tmp/pwned-{os.getuid()}").exists()


def test_proxy_command_path(sshd: SshServer, capfd: pytest.CaptureFixture[str]) -> None:
    """The HyperPod path (ProxyCommand) with a local TCP relay standing in for `aws ssm start-session`."""
    relay = Path(__file__).with_name("tcp_relay.py")
    target = sshd.target(proxy_command=f"{sys.executable} {relay} 127.0.0.1 %p")
    assert forward(target, ["--version"]) == 0
    assert capfd.readouterr().out.strip() == f"pipeline {__version__}"


def test_identity_file_and_explicit_port_without_alias(sshd: SshServer, tmp_path: Path,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "empty_config"
    config.write_text(f"Host *\n  UserKnownHostsFile {sshd.known_hosts}\n  StrictHostKeyChecking yes\n")
    target = sshd.target(host="127.0.0.1", port=sshd.port, user=sshd.user, identity_file=str(sshd.client_key),
                         ssh_config=str(config))
    assert forward(target, ["--version"]) == 0
    assert capfd.readouterr().out.strip() == f"pipeline {__version__}"


# ------------------------------------------------------------------------------------------------- errors


def test_unreachable_port_is_one_clear_line(sshd: SshServer, tmp_path: Path) -> None:
    config = sshd.write_ssh_config(tmp_path / "cfg")
    target = sshd.target(host="127.0.0.1", port=free_port(), user=sshd.user, ssh_config=str(config))
    with pytest.raises(UnreachableError) as info:
        forward(target, ["--version"])
    assert "connection refused" in info.value.message and "\n" not in info.value.message
    assert info.value.hint


def test_dns_failure(sshd: SshServer, tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    config.write_text("")
    with pytest.raises(UnreachableError, match="cannot resolve host name 'no-such-host.invalid'"):
        forward(sshd.target(host="no-such-host.invalid", ssh_config=str(config)), ["--version"])


def test_wrong_key_is_an_auth_error(sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    config = tmp_path / "cfg"
    text = sshd.ssh_config.read_text().replace(str(sshd.client_key), str(sshd.wrong_key))
    config.write_text(text)
    with pytest.raises(AuthError) as info:
        forward(sshd.target(ssh_config=str(config)), ["--version"])
    assert "authentication to" in info.value.message and "failed" in info.value.message
    assert "authorized_keys" in (info.value.hint or "")


def test_changed_host_key_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    other = Path(f"{sshd.wrong_key}.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(other)}\n")
    config = sshd.write_ssh_config(tmp_path / "cfg", UserKnownHostsFile=str(known))
    with pytest.raises(HostKeyError, match="does not match") as info:
        forward(sshd.target(ssh_config=str(config)), ["--version"])
    assert "ssh-keygen -R" in (info.value.hint or "")


def test_unknown_host_key_with_strict_checking(sshd: SshServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    config = sshd.write_ssh_config(tmp_path / "cfg", UserKnownHostsFile=str(known))
    with pytest.raises(HostKeyError, match="unknown"):
        forward(sshd.target(ssh_config=str(config)), ["--version"])
    # without StrictHostKeyChecking yes an unknown host is accepted (fabric's default) and nothing is written
    relaxed = sshd.write_ssh_config(tmp_path / "cfg2", UserKnownHostsFile=str(known), StrictHostKeyChecking="no")
    assert forward(sshd.target(ssh_config=str(relaxed)), ["--version"]) == 0
    assert known.read_text() == ""


def test_remote_pipeline_missing(sshd: SshServer) -> None:
    with pytest.raises(RemoteCommandError) as info:
        forward(sshd.target(pipeline="/nonexistent/bin/pipeline"), ["--version"])
    assert info.value.message.startswith(f"pipeline not found on {sshd.alias}: install it there (pip install ")
    assert "--remote-pipeline PATH, PIPELINE_REMOTE_PIPELINE=PATH, or remote.pipeline" in (info.value.hint or "")


def test_version_mismatch(sshd: SshServer, tmp_path: Path) -> None:
    fake = tmp_path / "fake-pipeline"
    fake.write_text("#!/bin/sh\necho 'pipeline 0.0.1'\n")
    fake.chmod(0o755)
    with pytest.raises(RemoteCommandError) as info:
        forward(sshd.target(pipeline=str(fake)), ["--version"])
    assert info.value.message == f"pipeline on {sshd.alias} is version 0.0.1, this one is {__version__}"


def test_noisy_login_shell_and_exact_argv(sshd: SshServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A remote that prints before the version (chatty ~/.bashrc) still matches; argv arrives word for word."""
    fake = tmp_path / "fake-pipeline"
    fake.write_text(f"#!/bin/sh\necho 'welcome to the head node'\n"
                    f"if [ \"$1\" = --version ]; then echo 'pipeline {__version__}'; exit 0; fi\n"
                    "printf '[%s]' \"$@\"; echo; echo \"forwarded=$PIPELINE_FORWARDED\"; exit 7\n")
    fake.chmod(0o755)
    assert forward(sshd.target(pipeline=str(fake)), ["status", "a b", "", "*", "--x=$HOME"]) == 7
    out = capfd.readouterr().out
    assert "[status][a b][][*][--x=$HOME]" in out and "forwarded=1" in out


def test_not_a_pipeline_executable(sshd: SshServer) -> None:
    with pytest.raises(RemoteCommandError, match="not 'pipeline X.Y.Z'"):
        forward(sshd.target(pipeline="/bin/false"), ["--version"])


def test_failed_upload_runs_nothing(sshd: SshServer, write_spec: Callable[..., Path], tmp_path: Path) -> None:
    """A real mid-upload failure: /proc files report size 0, so SFTP's post-upload size check fails after the
    spec itself was uploaded. No run may exist afterwards and no upload folder is left behind."""
    spec = write_spec(LOCAL_CHAIN.replace("inputs/words.txt", "x"))
    target = sshd.target(upload_dir=str(tmp_path / "up"))
    with pytest.raises(UploadError, match="nothing was run there"):
        forward(target, ["submit", str(spec)], [spec, Path("/proc/self/status")])
    assert not (Path(os.environ["PIPELINE_HOME"]) / "index").exists()
    assert list((tmp_path / "up").iterdir()) == []


def test_upload_dir_not_a_directory(sshd: SshServer, write_spec: Callable[..., Path], tmp_path: Path) -> None:
    spec = write_spec(LOCAL_CHAIN)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UploadError, match="not a directory"):
        forward(sshd.target(upload_dir=str(blocker / "uploads")), ["submit", str(spec)], [spec])
    assert not (Path(os.environ["PIPELINE_HOME"]) / "index").exists()


def test_missing_local_upload_connects_nowhere(tmp_path: Path) -> None:
    target = Target(host="no-such-host.invalid")
    with pytest.raises(UploadError, match="no such file"):
        forward(target, ["validate", "x.yaml"], [tmp_path / "x.yaml"])


def test_target_parse_and_from_remote() -> None:
    from orchestrator.spec import HyperPodTarget, Remote

    assert Target.parse("ubuntu@head:2222") == Target(host="head", user="ubuntu", port=2222)
    assert Target.parse("head") == Target(host="head")
    remote = Remote(host="head", user="ubuntu", identity_file="~/.ssh/k", pipeline="/opt/p", upload_dir="/fsx/up")
    target = Target.from_remote(remote)
    assert (target.host, target.user, target.identity_file, target.pipeline, target.upload_dir) == \
        ("head", "ubuntu", "~/.ssh/k", "/opt/p", "/fsx/up")
    with pytest.raises(Exception, match="HyperPod"):
        Target.from_remote(Remote(hyperpod=HyperPodTarget(cluster="c")))
    assert replace(target, port=2) != target


def test_referenced_files_rules(tmp_path: Path) -> None:
    (tmp_path / "proj" / "clusters").mkdir(parents=True)
    (tmp_path / "proj" / "clusters" / "head.yaml").write_text("name: head\n")
    (tmp_path / "proj" / "a.txt").write_text("a")
    (tmp_path / "proj" / "token").write_text("secret")
    (tmp_path / "outside.txt").write_text("o")
    spec = tmp_path / "proj" / "p.yaml"
    spec.write_text("""
name: p
cluster: head
secrets: {HF_TOKEN: {file: token}}
settings: {data: a.txt, other: /etc/hostname, url: "s3://b/a.txt"}
stages:
  - {name: s, kind: command, run: cat token, params: {x: ../outside.txt, y: [a.txt, missing.txt], z: 3}}
""")
    assert referenced_files(spec) == [spec, (tmp_path / "proj" / "a.txt").resolve(),
                                      (tmp_path / "proj" / "clusters" / "head.yaml").resolve()]
    broken = tmp_path / "proj" / "broken.yaml"
    broken.write_text("name: [\n")
    assert referenced_files(broken) == [broken]


CHILD = """
import json, sys
from orchestrator.remote import Target, forward
target = Target(**json.loads(sys.argv[1]))
sys.exit(forward(target, ["logs", sys.argv[2], "slow", "-f"]))
"""


def remote_procs(pattern: str) -> list[str]:
    done = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    return done.stdout.split()


def test_ctrl_c_on_follow_stops_the_remote_command(sshd: SshServer, write_spec: Callable[..., Path],
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    """`logs -f` gets a remote pty, so Ctrl-C (SIGINT here) stops the remote follower too, and returns 130."""
    spec = write_spec('name: slow\ncluster: local\nstages:\n  - {name: slow, kind: command, run: "echo started; sleep 120"}\n')
    target = sshd.target()
    assert forward(target, ["submit", str(spec)], [spec]) == 0
    run_id = capfd.readouterr().out.strip().splitlines()[-1]
    try:
        deadline = time.monotonic() + 60
        while True:
            forward(target, ["logs", run_id, "slow"])
            if "started" in capfd.readouterr().out:
                break
            assert time.monotonic() < deadline
            time.sleep(0.3)
        pattern = f"bin/pipeline logs {run_id} slow -f"
        child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(asdict(target)), run_id],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        try:
            deadline = time.monotonic() + 30
            while not remote_procs(pattern):
                assert child.poll() is None, child.communicate()
                assert time.monotonic() < deadline, "the remote `pipeline logs -f` never started"
                time.sleep(0.2)
            # SIGINT only once the follower has shown the log: under load the remote process can exist for
            # seconds before its first output, and the test is about Ctrl-C, not about that race.
            assert child.stdout is not None
            os.set_blocking(child.stdout.fileno(), False)
            seen = b""
            while b"started" not in seen:
                assert child.poll() is None, child.communicate()
                assert time.monotonic() < deadline + 30, f"`logs -f` showed no log: {seen!r}"
                seen += child.stdout.read() or b""
                time.sleep(0.1)
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=30)
            assert child.returncode == 130, (out, err)
            deadline = time.monotonic() + 15
            while remote_procs(pattern):
                assert time.monotonic() < deadline, "the remote follower kept running after Ctrl-C"
                time.sleep(0.2)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    finally:
        forward(target, ["cancel", run_id])
        capfd.readouterr()


# ------------------------------------------------------------------------------------------- issue 13, item 10


def _one_line_and_hint(exc: BaseException) -> tuple[str, str]:
    lines = str(exc).splitlines()
    assert len(lines) == 2 and lines[1].startswith("  hint: "), lines
    return lines[0], lines[1]


def test_peer_without_ssh_banner_is_one_line_no_traceback(sshd: SshServer, tmp_path: Path,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    """A TCP peer that accepts and closes at once (no SSH banner): paramiko's transport thread used to print its
    traceback (through logging's last-resort handler) before our error."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        config = tmp_path / "cfg"
        config.write_text("")
        with pytest.raises(UnreachableError) as info:
            forward(sshd.target(host="127.0.0.1", port=port, user=sshd.user, ssh_config=str(config)), ["--version"])
    finally:
        listener.close()
    line, hint = _one_line_and_hint(info.value)
    assert f"{sshd.user}@127.0.0.1:{port} accepted the connection but sent no SSH banner" in line
    assert f"ssh -v -F {config} -p {port} {sshd.user}@127.0.0.1" in hint
    err = capfd.readouterr().err
    assert "Traceback" not in err and "paramiko" not in err and "banner" not in err, err


def test_strict_checking_hint_names_the_known_hosts_file_that_does_not_exist_yet(sshd: SshServer,
                                                                                 tmp_path: Path) -> None:
    known = tmp_path / "not-yet" / "known_hosts"
    config = sshd.write_ssh_config(tmp_path / "cfg", UserKnownHostsFile=str(known))
    with pytest.raises(HostKeyError) as info:
        forward(sshd.target(ssh_config=str(config)), ["--version"])
    line, hint = _one_line_and_hint(info.value)
    assert "None" not in hint and str(known) in hint and f"ssh -F {config} {sshd.alias}" in hint


def test_changed_host_key_hint_names_a_custom_known_hosts_file(sshd: SshServer, tmp_path: Path) -> None:
    """ssh-keygen -R edits ~/.ssh/known_hosts unless told -f FILE; the hint must name the file that holds the key."""
    other = Path(f"{sshd.wrong_key}.pub").read_text().split()[:2]
    known = tmp_path / "custom_known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(other)}\n")
    config = sshd.write_ssh_config(tmp_path / "cfg", UserKnownHostsFile=str(known))
    with pytest.raises(HostKeyError) as info:
        forward(sshd.target(ssh_config=str(config)), ["--version"])
    _, hint = _one_line_and_hint(info.value)
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}' -f {known}" in hint
    # the suggested command really removes the stale key from that file
    subprocess.run(["ssh-keygen", "-R", f"[127.0.0.1]:{sshd.port}", "-f", str(known)], check=True, capture_output=True)
    assert "127.0.0.1" not in known.read_text()


@pytest.fixture
def agent_with_client_key(sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An ssh-agent holding the test client key: `--host user@host:port` has no profile to name an identity."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", str(sshd.client_key)], env=env, check=True, capture_output=True, timeout=30)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        yield sock
    finally:
        agent.terminate()
        agent.wait(timeout=10)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_host_flag_can_say_where_the_remote_pipeline_is(sshd: SshServer, agent_with_client_key: Path, how: str,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    """With --host there is no cluster profile to hold remote.pipeline: --remote-pipeline PATH or
    PIPELINE_REMOTE_PIPELINE=PATH says where it is. Without it, the error's hint offers exactly these."""
    from orchestrator import cli

    monkeypatch.delenv(FORWARDED_ENV, raising=False)
    monkeypatch.setenv("HOME", str(sshd.dir))  # no ~/.ssh of this machine: unknown host accepted, agent key used
    host = f"{sshd.user}@127.0.0.1:{sshd.port}"
    assert cli.main(["--host", host, "list"]) == 1  # `pipeline` is not on the remote PATH of a bare sshd session
    err = capfd.readouterr().err
    assert "pipeline not found on 127.0.0.1" in err and "--remote-pipeline PATH" in err and "Traceback" not in err
    if how == "flag":
        argv = ["--host", host, "--remote-pipeline", str(PIPELINE_EXE), "list"]
    else:
        monkeypatch.setenv("PIPELINE_REMOTE_PIPELINE", str(PIPELINE_EXE))
        argv = ["--host", host, "list"]
    assert cli.main(argv) == 0, capfd.readouterr().err
