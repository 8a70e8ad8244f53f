"""Real servers for the remote tests: an OpenSSH sshd on 127.0.0.1 and a moto S3 server, both session-scoped.

sshd (Debian `openssh-server`, installed with apt-get when missing and running as root; otherwise the tests
skip and say why) runs with its own host key, config and authorized_keys in a temp dir; the client side gets
its own key pair, ssh_config and known_hosts there too, so ~/.ssh of this machine is never read or touched
(Target.ssh_config points fabric at the temp config). The "remote" pipeline is this checkout's
.venv/bin/pipeline, reached over SSH like a head node's.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from orchestrator.remote import Target

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / ".venv" / "bin" / "pipeline"
SSHD = Path("/usr/sbin/sshd")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen on {port} within {timeout} s: {log.read_text(errors='replace')[-2000:]}")


def _ensure_sshd() -> str | None:
    """None when sshd is usable, else the reason to skip."""
    if not SSHD.exists():
        if os.geteuid() != 0:
            return "OpenSSH server (/usr/sbin/sshd) is not installed and the tests are not running as root"
        if shutil.which("apt-get") is None:
            return "OpenSSH server is not installed and apt-get is not available"
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "openssh-server"]
        if subprocess.run(install, env=env, capture_output=True, timeout=600, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600, check=False)
            done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600, check=False)
            if done.returncode != 0:
                return f"apt-get install openssh-server failed: {done.stderr.strip()[-300:]}"
    for tool in ("ssh-keygen",):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: openssh-client)"
    if os.geteuid() == 0:
        # sshd refuses to start without its privilege separation directory (normally made by systemd).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    return None


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, capture_output=True, timeout=30)
    return path


@dataclass
class SshServer:
    dir: Path
    port: int
    user: str
    client_key: Path
    wrong_key: Path
    host_pub: str
    ssh_config: Path
    known_hosts: Path
    alias: str = "testhead"

    def target(self, **overrides: object) -> Target:
        """Target for the temp-config alias; the remote pipeline uses this test's PIPELINE_HOME."""
        base = Target(host=self.alias, ssh_config=str(self.ssh_config), pipeline=str(PIPELINE),
                      upload_dir=str(self.dir / "uploads"), env={"PIPELINE_HOME": os.environ["PIPELINE_HOME"]},
                      connect_timeout=10)
        return replace(base, **overrides)  # type: ignore[arg-type]

    def write_ssh_config(self, path: Path, **settings: str) -> Path:
        """A client ssh config with the alias and these settings (e.g. UserKnownHostsFile=...)."""
        lines = [f"Host {self.alias}", "  HostName 127.0.0.1", f"  Port {self.port}", f"  User {self.user}",
                 f"  IdentityFile {self.client_key}", "  IdentitiesOnly yes",
                 f"  UserKnownHostsFile {settings.pop('UserKnownHostsFile', str(self.known_hosts))}",
                 f"  StrictHostKeyChecking {settings.pop('StrictHostKeyChecking', 'yes')}"]
        lines += [f"  {key} {value}" for key, value in settings.items()]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    pytest.importorskip("fabric", reason="fabric is in the `remote` extra: pip install -e '.[remote]'")
    reason = _ensure_sshd()
    if reason:
        pytest.skip(reason)
    if not PIPELINE.exists():
        pytest.skip(f"{PIPELINE} does not exist (run ./dev test to set up .venv)")
    d = tmp_path_factory.mktemp("sshd")
    d.chmod(0o755)
    host_key = keygen(d / "host_ed25519")
    client_key = keygen(d / "client_ed25519")
    wrong_key = keygen(d / "wrong_ed25519")
    (d / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text(encoding="utf-8"), encoding="utf-8")
    (d / "authorized_keys").chmod(0o600)
    port = free_port()
    sftp_server = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
                        if Path(p).exists()), "internal-sftp")
    config = d / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "UsePAM no", "StrictModes no",
        "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", f"Subsystem sftp {sftp_server}", "LogLevel VERBOSE", "MaxStartups 100",
        "MaxSessions 100", "PrintMotd no", "",
    ]), encoding="utf-8")
    log = d / "sshd.log"
    with open(log, "wb") as log_handle:
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                stdout=log_handle, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, log)
        host_pub = " ".join((d / "host_ed25519.pub").read_text(encoding="utf-8").split()[:2])
        known_hosts = d / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub}\n", encoding="utf-8")
        server = SshServer(dir=d, port=port, user=getpass.getuser(), client_key=client_key, wrong_key=wrong_key,
                           host_pub=host_pub, ssh_config=d / "ssh_config", known_hosts=known_hosts)
        server.write_ssh_config(server.ssh_config)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str]


def _moto_server(tmp_path_factory: pytest.TempPathFactory, name: str, extra_env: dict[str, str]) -> Iterator[S3Server]:
    moto = Path(sys.executable).with_name("moto_server")
    if not moto.exists():
        pytest.skip("moto_server is not installed: .venv/bin/pip install 'moto[server]'")
    d = tmp_path_factory.mktemp(name)
    port = free_port()
    log = d / "moto.log"
    env = {**os.environ, **extra_env}
    with open(log, "wb") as handle:
        proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdin=subprocess.DEVNULL,
                                stdout=handle, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port(port, proc, log, timeout=60)
        endpoint = f"http://127.0.0.1:{port}"
        yield S3Server(endpoint=endpoint, env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                                                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint})
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3-compatible server (real HTTP, real boto3 transfers), open to any credentials."""
    yield from _moto_server(tmp_path_factory, "moto", {})


@pytest.fixture(scope="session")
def s3_server_iam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's server with IAM enforcement: after the first 4 requests (setup), every request is authorised
    against moto's IAM, so a key of a user without a policy gets a real AccessDenied from the server."""
    yield from _moto_server(tmp_path_factory, "moto-iam", {"INITIAL_NO_AUTH_ACTION_COUNT": "4"})


@pytest.fixture
def aws_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    return s3_server
