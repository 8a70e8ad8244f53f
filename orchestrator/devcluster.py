"""A throwaway but real Slurm cluster on one machine: munge, MariaDB, slurmdbd, slurmctld and N slurmd.

Every daemon runs from files in one work directory (config, keys, sockets, pids, logs, state), so nothing
touches /etc/slurm or the system munge socket, and `down` leaves nothing behind. Clients find the cluster
through SLURM_CONF. The N slurmd are N distinct nodes (dev1..devN) on one host: each is started with
`slurmd -N devK` and has its own Port= in slurm.conf (the multiple-slurmd layout of Slurm's
"programmer_guide"/"faq#multi_slurmd"; Debian's 22.05 build accepts -N).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator import proc
from orchestrator.errors import PipelineError

PACKAGES = ("slurmctld", "slurmd", "slurmdbd", "slurm-client", "munge", "mariadb-server")
BINARIES = ("slurmctld", "slurmd", "slurmdbd", "sacctmgr", "munged", "mariadbd", "mariadb-install-db")
CLUSTER = "devcluster"
PARTITION = "debug"
BOOT_TIMEOUT_S = 120.0


class DevClusterError(PipelineError):
    """The dev cluster could not be installed, booted or stopped; the message says what to do."""


@dataclass(frozen=True)
class DevCluster:
    workdir: Path
    conf: Path
    nodes: tuple[str, ...]
    partition: str

    @property
    def conf_without_accounting(self) -> Path:
        """The same cluster seen through a slurm.conf with AccountingStorageType=accounting_storage/none:
        `sacct` then fails with "Slurm accounting storage is disabled", as on clusters without slurmdbd,
        while squeue/scontrol keep working against the same slurmctld."""
        return self.workdir / "etc" / "slurm-noacct.conf"

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}


def _free_ports(count: int) -> list[int]:
    socks, ports = [], []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in socks:
        sock.close()
    return ports


def install_packages() -> None:
    """apt-get install what is missing (Debian/Ubuntu, as root)."""
    if all(shutil.which(b) or Path("/usr/sbin", b).exists() for b in BINARIES):
        return
    if os.geteuid() != 0:
        raise DevClusterError("Slurm is not installed and this is not root",
                              ) from None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = proc.run(argv, env=env, timeout=900, check=False)
        if done.returncode != 0:
            raise DevClusterError(f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}")


def _layout(workdir: Path) -> dict[str, Path]:
    names = ("etc", "run", "log", "spool", "state", "munge", "mysql")
    paths = {n: workdir / n for n in names}
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
    return paths


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start a daemon in its own session (it outlives this process) and return its pid."""
    with open(log, "ab") as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, env=env)
    return child.pid


def _record(workdir: Path, name: str, pid: int) -> None:
    (workdir / "run" / f"{name}.pid").write_text(f"{pid}\n")


def _wait_for(what: str, check: object, workdir: Path, timeout: float = BOOT_TIMEOUT_S) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise DevClusterError(f"{what} did not come up within {timeout:.0f} s\n{_log_tails(workdir)}")


def _log_tails(workdir: Path) -> str:
    parts = []
    for log in sorted((workdir / "log").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-8:]
        parts.append(f"--- {log.name}\n" + "\n".join(lines))
    return "\n".join(parts)


def _client_env(conf: Path) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": str(conf)}


def _ok(argv: list[str], env: dict[str, str]) -> bool:
    try:
        return proc.run(argv, env=env, timeout=15, check=False).returncode == 0
    except PipelineError:  # not answering within the timeout (or not installed) is "not up yet"
        return False


def _start_munge(paths: dict[str, Path]) -> Path:
    key = paths["munge"] / "munge.key"
    if not key.exists():
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
    sock = paths["munge"] / "munge.sock"
    pid = _spawn(["munged", "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
                  f"--pid-file={paths['run'] / 'munged.real.pid'}", f"--log-file={paths['log'] / 'munged.log'}",
                  f"--seed-file={paths['munge'] / 'seed'}"], paths["log"] / "munged.out.log")
    _record(paths["etc"].parent, "munged", pid)
    _wait_for("munged", lambda: sock.exists(), paths["etc"].parent)
    return sock


def _start_mariadb(paths: dict[str, Path], port: int) -> str:
    data = paths["mysql"] / "data"
    if not (data / "mysql").exists():
        done = proc.run(["mariadb-install-db", f"--datadir={data}", "--user=root",
                         "--auth-root-authentication-method=socket", "--skip-test-db"], timeout=300, check=False)
        if done.returncode != 0:
            raise DevClusterError(f"mariadb-install-db failed: {done.stderr[-500:]}")
    client = _spawn_mariadb(paths["etc"].parent, port)
    password = secrets.token_hex(12)
    sql = (f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}';"
           f"ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}';"
           "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;")
    # On stdin, not in argv: a password in argv is readable by every user through /proc/<pid>/cmdline.
    done = proc.run(client, input_text=sql, timeout=30, check=False)
    if done.returncode != 0:
        raise DevClusterError(f"creating the slurm database user failed: {done.stderr.strip()[-500:]}")
    return password


def _spawn_mariadb(workdir: Path, port: int) -> list[str]:
    """Start mariadbd on its data directory; returns the root client argv once it answers."""
    data, sock = workdir / "mysql" / "data", workdir / "mysql" / "mysqld.sock"
    pid = _spawn(["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={sock}", "--user=root",
                  "--bind-address=127.0.0.1", f"--port={port}", f"--pid-file={workdir / 'run' / 'mariadb.real.pid'}",
                  "--innodb-buffer-pool-size=32M", "--skip-name-resolve"], workdir / "log" / "mariadb.log")
    _record(workdir, "mariadbd", pid)
    client = ["mariadb", "--no-defaults", f"--socket={sock}", "-uroot"]
    _wait_for("MariaDB", lambda: _ok([*client, "-e", "select 1"], dict(os.environ)), workdir)
    return client


def stop_database(cluster: DevCluster) -> None:
    """Accounting down, slurmdbd up: stop MariaDB, so sacct fails with "Unable to connect to database"."""
    _stop(cluster.workdir / "run" / "mariadbd.pid")


def start_database(cluster: DevCluster) -> None:
    conf = (cluster.workdir / "etc" / "slurmdbd.conf").read_text()
    port = int(next(l.split("=", 1)[1] for l in conf.splitlines() if l.startswith("StoragePort=")))
    _spawn_mariadb(cluster.workdir, port)
    env = _client_env(cluster.conf)
    _wait_for("sacct", lambda: _ok(["sacct", "-n", "-X", "-S", "now-1hour"], env), cluster.workdir)


def _write_configs(paths: dict[str, Path], nodes: list[str], cpus: int, ports: dict[str, int],
                   munge_sock: Path, db_password: str) -> Path:
    host = socket.gethostname().split(".")[0]
    auth = f"AuthType=auth/munge\nAuthInfo=socket={munge_sock}\n"
    dbd = (f"{auth}DbdHost=localhost\nDbdAddr=127.0.0.1\nDbdPort={ports['dbd']}\nSlurmUser=root\n"
           f"PidFile={paths['run'] / 'slurmdbd.real.pid'}\nLogFile={paths['log'] / 'slurmdbd.log'}\n"
           "StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n"
           f"StoragePort={ports['mysql']}\nStorageUser=slurm\nStoragePass={db_password}\n"
           "StorageLoc=slurm_acct_db\n")
    dbd_conf = paths["etc"] / "slurmdbd.conf"
    dbd_conf.write_text(dbd)
    dbd_conf.chmod(0o600)  # slurmdbd refuses a world-readable file that holds the DB password
    node_lines = "".join(f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={ports[n]} CPUs={cpus} "
                         "RealMemory=2000 State=UNKNOWN\n" for n in nodes)
    # cred_expire (slurm.conf(5) AuthInfo) is also how long a requeued job waits before it may start again
    # (default 120 s): 30 s keeps node-loss drills short and still outlasts a step launch on 2 busy cores.
    ctld_auth = auth.replace(f"socket={munge_sock}", f"socket={munge_sock},cred_expire=30")
    conf = (
        f"ClusterName={CLUSTER}\nSlurmctldHost={host}(127.0.0.1)\nSlurmctldPort={ports['ctld']}\n{ctld_auth}"
        "CredType=cred/munge\nSlurmUser=root\nSlurmdUser=root\nMpiDefault=none\n"
        # No systemd/cgroup delegation inside containers: track processes by parentage, bind nothing.
        "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n"
        "SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\nSchedulerType=sched/backfill\n"
        # Snappy scheduling for tests (slurm.conf: sched_min_interval in us, bf_interval in s).
        "SchedulerParameters=bf_interval=2,sched_min_interval=100000,batch_sched_delay=0\n"
        "ReturnToService=2\nSlurmdTimeout=20\nInactiveLimit=0\nKillWait=5\nMinJobAge=300\nJobRequeue=1\n"
        f"StateSaveLocation={paths['state']}\nSlurmdSpoolDir={paths['spool']}/%n\n"
        f"SlurmctldPidFile={paths['run'] / 'slurmctld.real.pid'}\nSlurmdPidFile={paths['run']}/slurmd-%n.real.pid\n"
        f"SlurmctldLogFile={paths['log'] / 'slurmctld.log'}\nSlurmdLogFile={paths['log']}/slurmd-%n.log\n"
        "AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n"
        f"AccountingStoragePort={ports['dbd']}\nJobCompType=jobcomp/none\n"
        # slurm.conf(5): with slurmdbd + MUNGE, AccountingStoragePass names the munge socket used to reach it.
        f"AccountingStoragePass={munge_sock}\n"
        f"{node_lines}PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
    )
    slurm_conf = paths["etc"] / "slurm.conf"
    slurm_conf.write_text(conf)
    noacct = conf.replace("AccountingStorageType=accounting_storage/slurmdbd",
                          "AccountingStorageType=accounting_storage/none")
    (paths["etc"] / "slurm-noacct.conf").write_text(noacct)
    return slurm_conf


def _is_up(workdir: Path) -> bool:
    pidfiles = list((workdir / "run").glob("*.pid")) if (workdir / "run").is_dir() else []
    return bool(pidfiles) and all(_alive(p) for p in pidfiles if not p.name.endswith(".real.pid"))


def _alive(pidfile: Path) -> bool:
    try:
        return not _gone(int(pidfile.read_text().strip()))
    except (ValueError, FileNotFoundError):
        return False


def up(workdir: Path, nodes: int = 4, cpus_per_node: int = 2) -> DevCluster:
    """Boot (or reuse) the cluster in workdir; returns once every node is idle and sacct answers."""
    workdir = workdir.resolve()
    names = [f"dev{i}" for i in range(1, nodes + 1)]
    conf = workdir / "etc" / "slurm.conf"
    cluster = DevCluster(workdir, conf, tuple(names), PARTITION)
    if _is_up(workdir) and conf.exists():
        return cluster
    down(workdir)
    install_packages()
    paths = _layout(workdir)
    ports = dict(zip(["ctld", "dbd", "mysql", *names], _free_ports(3 + nodes)))
    munge_sock = _start_munge(paths)
    password = _start_mariadb(paths, ports["mysql"])
    conf = _write_configs(paths, names, cpus_per_node, ports, munge_sock, password)
    env = _client_env(conf)
    _record(workdir, "slurmdbd", _spawn(["slurmdbd", "-D"], paths["log"] / "slurmdbd.out.log", env))
    _wait_for("slurmdbd", lambda: _ok(["sacctmgr", "-n", "show", "cluster"], env), workdir, timeout=30)
    proc.run(["sacctmgr", "-i", "add", "cluster", CLUSTER], env=env, timeout=30, check=False)  # exists on reboot
    _record(workdir, "slurmctld", _spawn(["slurmctld", "-D", "-c"], paths["log"] / "slurmctld.out.log", env))
    _wait_for("slurmctld", lambda: _ok(["scontrol", "ping"], env), workdir)
    for name in names:
        (paths["spool"] / name).mkdir(exist_ok=True)
        _record(workdir, f"slurmd-{name}", _spawn(["slurmd", "-D", "-N", name], paths["log"] / f"slurmd-{name}.out.log", env))
    _wait_for("all nodes idle", lambda: _all_idle(env, nodes), workdir)
    _wait_for("sacct", lambda: _ok(["sacct", "-n", "-X", "-S", "now-1hour"], env), workdir)
    return cluster


def restart_controller(cluster: DevCluster) -> None:
    """Stop slurmctld and start it again from its saved state (no -c): a controller restart drill."""
    _stop(cluster.workdir / "run" / "slurmctld.pid")
    env = _client_env(cluster.conf)
    pid = _spawn(["slurmctld", "-D"], cluster.workdir / "log" / "slurmctld.out.log", env)
    _record(cluster.workdir, "slurmctld", pid)
    _wait_for("slurmctld", lambda: _ok(["scontrol", "ping"], env), cluster.workdir)


def kill_node(cluster: DevCluster, node: str) -> None:
    """Node loss: SIGKILL the node's slurmd, its job processes and their slurmstepd, as if the machine vanished."""
    pid = int((cluster.workdir / "run" / f"slurmd-{node}.pid").read_text())
    victims = {pid}
    for proc_dir in Path("/proc").iterdir():
        if proc_dir.name.isdigit() and _env_value(proc_dir, b"SLURMD_NODENAME") == node:
            victims.add(int(proc_dir.name))
            parent = _parent(proc_dir)
            if parent and (Path("/proc") / str(parent) / "cmdline").read_bytes().startswith(b"slurmstepd"):
                victims.add(parent)
    for target in victims:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _gone(pid)


def _env_value(proc_dir: Path, key: bytes) -> str | None:
    try:
        for item in (proc_dir / "environ").read_bytes().split(b"\0"):
            if item.startswith(key + b"="):
                return item.split(b"=", 1)[1].decode(errors="replace")
    except OSError:
        pass
    return None


def _parent(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def start_node(cluster: DevCluster, node: str) -> None:
    env = _client_env(cluster.conf)
    pid = _spawn(["slurmd", "-D", "-N", node], cluster.workdir / "log" / f"slurmd-{node}.out.log", env)
    _record(cluster.workdir, f"slurmd-{node}", pid)


def _all_idle(env: dict[str, str], count: int) -> bool:
    out = proc.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=env, timeout=15, check=False)
    states = [line.split()[1] for line in out.stdout.splitlines() if line.strip()]
    return len(states) == count and all(s == "idle" for s in states)


def down(workdir: Path) -> None:
    """Stop every daemon this work directory started (slurmd first, MariaDB and munge last)."""
    run = workdir / "run"
    if not run.is_dir():
        return
    order = ["slurmd-", "slurmctld", "slurmdbd", "mariadbd", "munged"]
    pidfiles = sorted(run.glob("*.pid"), key=lambda p: next((i for i, o in enumerate(order) if p.name.startswith(o)), 9))
    for pidfile in pidfiles:
        if pidfile.name.endswith(".real.pid"):
            continue
        _stop(pidfile)
    for pidfile in run.glob("*.pid"):
        pidfile.unlink(missing_ok=True)


def _stop(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (ValueError, FileNotFoundError):
        return
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _gone(pid):
                return
            time.sleep(0.1)


def _gone(pid: int) -> bool:
    """True once pid has exited; reaps it when it is our child (a zombie still answers kill(pid, 0))."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def status(workdir: Path) -> str:
    run = workdir / "run"
    if not run.is_dir():
        return f"no dev cluster in {workdir}"
    lines = [f"{p.stem}: {'up' if _alive(p) else 'down'}" for p in sorted(run.glob("*.pid"))
             if not p.name.endswith(".real.pid")]
    return "\n".join(lines) or f"no dev cluster in {workdir}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipeline dev-cluster")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", default=str(Path.home() / ".pipeline" / "dev-cluster"))
    parser.add_argument("--nodes", type=int, default=4)
    args = parser.parse_args(argv)
    workdir = Path(args.dir)
    try:
        if args.action == "up":
            cluster = up(workdir, args.nodes)
            print(f"dev cluster up: nodes {','.join(cluster.nodes)}, partition {cluster.partition}")
            print(f"export SLURM_CONF={cluster.conf}")
        elif args.action == "down":
            down(workdir)
            print(f"dev cluster in {workdir} stopped")
        else:
            print(status(workdir))
    except DevClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
