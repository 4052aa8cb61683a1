"""A one-node SLURM cluster for the tests: munged, slurmctld and slurmd started as root from a generated slurm.conf
(proctrack/linuxproc, task/none, this host as the only node, state under a temporary folder), torn down after."""

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue")


def missing() -> str | None:
    """Why SLURM cannot run here, or None."""
    absent = [name for name in DAEMONS if shutil.which(name) is None]
    if absent:
        return (f"SLURM is not installed ({', '.join(absent)} missing): apt-get install -y slurmctld slurmd munge "
                f"slurm-client")
    if os.geteuid() != 0:
        return "the one-node SLURM of the tests runs its daemons as root"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def cluster(folder: Path, cpus: int = 4) -> Iterator[dict[str, str]]:
    """Starts the daemons; yields the environment for sbatch, scontrol and squeue; stops them all."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    socket_path = folder / "munge.socket"
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=tests", f"SlurmctldHost={host}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={socket_path}",
        f"StateSaveLocation={folder / 'state'}", f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}", f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}", f"SlurmdLogFile={folder / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
        "SchedulerType=sched/builtin", "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "SlurmdParameters=config_overrides", "ReturnToService=2", "JobRequeue=1", "KillWait=60",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "SchedulerParameters=sched_interval=1", "MinJobAge=600",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN",
        f"PartitionName=tests Nodes={host} Default=YES MaxTime=INFINITE State=UP",
    ]) + "\n")
    for name in ("state", "spool"):
        (folder / name).mkdir(exist_ok=True)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[subprocess.Popen] = []
    try:
        started.append(subprocess.Popen(
            ["munged", "-F", "--force", f"--socket={socket_path}", f"--key-file={key}",
             f"--pid-file={folder / 'munged.pid'}", f"--log-file={folder / 'munged.log'}",
             f"--seed-file={folder / 'munged.seed'}"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        wait_for(socket_path.exists, 20, "munged did not start", folder / "munged.log")
        started.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        started.append(subprocess.Popen(["slurmd", "-D", "-f", str(conf)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        wait_for(lambda: node_state(env) in ("idle", "mixed", "allocated"), 60, "the node did not come up",
                 folder / "slurmd.log")
        yield env
    finally:
        for daemon in reversed(started):
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def node_state(env: dict[str, str]) -> str:
    run = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
    return run.stdout.strip().rstrip("*~#")


def wait_for(condition, seconds: float, message: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{message}: {log.read_text()[-3000:] if log.exists() else 'no log'}")
        time.sleep(0.5)
