"""Start and stop a real single-node SLURM (munge + slurmctld + slurmd on localhost) for tests.

Needs root and Debian's slurmctld, slurmd, slurm-client and munge (`.ci/setup-system.sh` installs them).
Follows shared/reference/slurm-single-node.md: no accounting daemon, so Snakemake's plugin must poll with
squeue (the profile sets slurm-status-command: squeue) and MinJobAge stays >= 120 s.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

CONF = """\
ClusterName=facecaption-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=300
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/d
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName={host} CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class SlurmUnavailable(RuntimeError):
    pass


def _need(binary: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if not path:
        raise SlurmUnavailable(f"{binary} not found: install slurmctld slurmd slurm-client munge (.ci/setup-system.sh)")
    return path


class Slurm:
    def __init__(self, state: Path):
        self.state = Path(state)
        self.conf = Path("/etc/slurm/slurm.conf")

    def start(self, timeout: float = 60) -> None:
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting SLURM needs root")
        munged, ctld, slurmd = _need("munged"), _need("slurmctld"), _need("slurmd")
        _need("sbatch")
        host = socket.gethostname().split(".")[0]
        mem_kib = int(next(ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")))
        for sub in ("ctld", "d"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self._old_conf = self.conf.read_text() if self.conf.exists() else None
        self.conf.write_text(CONF.format(host=host, state=self.state, cpus=os.cpu_count(), mem=int(mem_kib / 1024 * 0.9)))
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["mungekey", "--create"], check=False)
        subprocess.run(["install", "-d", "-o", "munge", "-g", "munge", "-m", "0755", "/run/munge"], check=True)
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
            subprocess.run(["runuser", "-u", "munge", "--", munged], check=True)
        subprocess.run([ctld, "-c"], check=True)  # -c: clean start, no old state
        subprocess.run([slurmd], check=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated"):
                return
            time.sleep(1)
        logs = "\n".join(p.read_text()[-2000:] for p in self.state.glob("*.log"))
        self.stop()
        raise SlurmUnavailable(f"SLURM node did not become idle within {timeout:.0f} s:\n{logs}")

    def stop(self) -> None:
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            path = self.state / pid_file
            if path.exists():
                try:
                    os.kill(int(path.read_text().strip()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)
        if getattr(self, "_old_conf", None) is not None:
            self.conf.write_text(self._old_conf)
