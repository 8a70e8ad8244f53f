"""The dev cluster's slurmdbd.conf and slurm.conf (plus a copy without accounting), all under its work
directory; every value that a drill or a test depends on is explained where it is set."""

from __future__ import annotations

import socket
from pathlib import Path

CLUSTER = "devcluster"
PARTITION = "debug"


def write_configs(paths: dict[str, Path], nodes: list[str], cpus: int, ports: dict[str, int],
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
