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
import sys
from dataclasses import dataclass
from pathlib import Path

from orchestrator import daemons, devconf, proc
from orchestrator.daemons import DevClusterError
from orchestrator.devconf import CLUSTER, PARTITION

PACKAGES = ("slurmctld", "slurmd", "slurmdbd", "slurm-client", "munge", "mariadb-server")
BINARIES = ("slurmctld", "slurmd", "slurmdbd", "sacctmgr", "munged", "mariadbd", "mariadb-install-db")


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


def _start_munge(paths: dict[str, Path]) -> Path:
    key = paths["munge"] / "munge.key"
    if not key.exists():
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
    sock = paths["munge"] / "munge.sock"
    pid = daemons.spawn(["munged", "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
                  f"--pid-file={paths['run'] / 'munged.real.pid'}", f"--log-file={paths['log'] / 'munged.log'}",
                  f"--seed-file={paths['munge'] / 'seed'}"], paths["log"] / "munged.out.log")
    daemons.record(paths["etc"].parent, "munged", pid)
    daemons.wait_for("munged", lambda: sock.exists(), paths["etc"].parent)
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
    pid = daemons.spawn(["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={sock}", "--user=root",
                  "--bind-address=127.0.0.1", f"--port={port}", f"--pid-file={workdir / 'run' / 'mariadb.real.pid'}",
                  "--innodb-buffer-pool-size=32M", "--skip-name-resolve"], workdir / "log" / "mariadb.log")
    daemons.record(workdir, "mariadbd", pid)
    client = ["mariadb", "--no-defaults", f"--socket={sock}", "-uroot"]
    daemons.wait_for("MariaDB", lambda: daemons.ok([*client, "-e", "select 1"], dict(os.environ)), workdir)
    return client


def stop_database(cluster: DevCluster) -> None:
    """Accounting down, slurmdbd up: stop MariaDB, so sacct fails with "Unable to connect to database"."""
    daemons.stop(cluster.workdir / "run" / "mariadbd.pid")


def start_database(cluster: DevCluster) -> None:
    conf = (cluster.workdir / "etc" / "slurmdbd.conf").read_text()
    port = int(next(l.split("=", 1)[1] for l in conf.splitlines() if l.startswith("StoragePort=")))
    _spawn_mariadb(cluster.workdir, port)
    env = daemons.client_env(cluster.conf)
    daemons.wait_for("sacct", lambda: daemons.ok(["sacct", "-n", "-X", "-S", "now-1hour"], env), cluster.workdir)


def _is_up(workdir: Path) -> bool:
    pidfiles = list((workdir / "run").glob("*.pid")) if (workdir / "run").is_dir() else []
    return bool(pidfiles) and all(daemons.alive(p) for p in pidfiles if not p.name.endswith(".real.pid"))


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
    conf = devconf.write_configs(paths, names, cpus_per_node, ports, munge_sock, password)
    env = daemons.client_env(conf)
    daemons.record(workdir, "slurmdbd", daemons.spawn(["slurmdbd", "-D"], paths["log"] / "slurmdbd.out.log", env))
    daemons.wait_for("slurmdbd", lambda: daemons.ok(["sacctmgr", "-n", "show", "cluster"], env), workdir, timeout=30)
    proc.run(["sacctmgr", "-i", "add", "cluster", CLUSTER], env=env, timeout=30, check=False)  # exists on reboot
    daemons.record(workdir, "slurmctld", daemons.spawn(["slurmctld", "-D", "-c"], paths["log"] / "slurmctld.out.log", env))
    daemons.wait_for("slurmctld", lambda: daemons.ok(["scontrol", "ping"], env), workdir)
    for name in names:
        (paths["spool"] / name).mkdir(exist_ok=True)
        daemons.record(workdir, f"slurmd-{name}", daemons.spawn(["slurmd", "-D", "-N", name], paths["log"] / f"slurmd-{name}.out.log", env))
    daemons.wait_for("all nodes idle", lambda: _all_idle(env, nodes), workdir)
    daemons.wait_for("sacct", lambda: daemons.ok(["sacct", "-n", "-X", "-S", "now-1hour"], env), workdir)
    return cluster


def restart_controller(cluster: DevCluster) -> None:
    """Stop slurmctld and start it again from its saved state (no -c): a controller restart drill."""
    daemons.stop(cluster.workdir / "run" / "slurmctld.pid")
    env = daemons.client_env(cluster.conf)
    pid = daemons.spawn(["slurmctld", "-D"], cluster.workdir / "log" / "slurmctld.out.log", env)
    daemons.record(cluster.workdir, "slurmctld", pid)
    daemons.wait_for("slurmctld", lambda: daemons.ok(["scontrol", "ping"], env), cluster.workdir)


def kill_node(cluster: DevCluster, node: str) -> None:
    """Node loss: SIGKILL the node's slurmd, its job processes and their slurmstepd, as if the machine vanished."""
    pid = int((cluster.workdir / "run" / f"slurmd-{node}.pid").read_text())
    victims = {pid}
    for proc_dir in Path("/proc").iterdir():
        if proc_dir.name.isdigit() and daemons.env_value(proc_dir, b"SLURMD_NODENAME") == node:
            victims.add(int(proc_dir.name))
            parent = daemons.parent_pid(proc_dir)
            if parent and (Path("/proc") / str(parent) / "cmdline").read_bytes().startswith(b"slurmstepd"):
                victims.add(parent)
    for target in victims:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
    daemons.gone(pid)


def start_node(cluster: DevCluster, node: str) -> None:
    env = daemons.client_env(cluster.conf)
    pid = daemons.spawn(["slurmd", "-D", "-N", node], cluster.workdir / "log" / f"slurmd-{node}.out.log", env)
    daemons.record(cluster.workdir, f"slurmd-{node}", pid)


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
        daemons.stop(pidfile)
    for pidfile in run.glob("*.pid"):
        pidfile.unlink(missing_ok=True)


def status(workdir: Path) -> str:
    run = workdir / "run"
    if not run.is_dir():
        return f"no dev cluster in {workdir}"
    lines = [f"{p.stem}: {'up' if daemons.alive(p) else 'down'}" for p in sorted(run.glob("*.pid"))
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
