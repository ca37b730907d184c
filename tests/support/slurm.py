"""Start and stop a real single-node SLURM (munge + slurmctld + slurmd on localhost) for tests.

Needs root and Debian's slurmctld, slurmd, slurm-client and munge (`.ci/setup-system.sh` installs them).
Follows shared/reference/slurm-single-node.md: no accounting daemon, so Snakemake's plugin must poll with
squeue (the profile sets slurm-status-command: squeue) and MinJobAge stays >= 120 s.

The node also offers ``gpus`` GPUs as a generic resource (GresTypes=gpu, Gres=gpu:N in slurm.conf, gres.conf):
enough for SLURM to schedule GPU jobs (--gpus, --gres=gpu:N, --cpus-per-gpu; scontrol shows TresPerJob /
TresPerNode) on a machine without any, and to hand each job CUDA_VISIBLE_DEVICES; what runs there finds no CUDA.
Slurm 22.05's gres/gpu plugin drops a GPU without ``File=`` ("Removing file-less GPU", even with AutoDetect=off
or Flags=CountOnly) and the node then drains, so each GPU gets a stand-in character device in the state folder
(a copy of /dev/null, made with mknod; a plain file where mknod is not allowed: slurmd logs an error for it but
counts it). Counting GPUs in TRES (AccountingStorageTRES=gres/gpu) would need slurmdbd.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
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
GresTypes=gpu
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
NodeName={host} CPUs={cpus} RealMemory={mem}{gres} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""

# one stand-in device file per GPU (see the module's docstring), no NVML autodetection
GRES_CONF = """\
AutoDetect=off
NodeName={host} Name=gpu Count={gpus} File={dev}/gpu[0-{last}]
"""


class SlurmUnavailable(RuntimeError):
    pass


def _need(binary: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if not path:
        raise SlurmUnavailable(f"{binary} not found: install slurmctld slurmd slurm-client munge (.ci/setup-system.sh)")
    return path


class Slurm:
    def __init__(self, state: Path, gpus: int = 2):
        self.state = Path(state)
        self.gpus = gpus
        self.conf = Path("/etc/slurm/slurm.conf")
        self.gres_conf = self.conf.with_name("gres.conf")  # slurmd reads it next to slurm.conf

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
        self._old = {p: (p.read_text() if p.exists() else None) for p in (self.conf, self.gres_conf)}
        self.conf.write_text(CONF.format(host=host, state=self.state, cpus=os.cpu_count(), mem=int(mem_kib / 1024 * 0.9),
                                         gres=f" Gres=gpu:{self.gpus}" if self.gpus else ""))
        if self.gpus:
            self.gres_conf.write_text(GRES_CONF.format(host=host, gpus=self.gpus, dev=self._gpu_devices(), last=self.gpus - 1))
        else:
            self.gres_conf.unlink(missing_ok=True)
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

    def _gpu_devices(self) -> Path:
        dev = self.state / "dev"
        dev.mkdir(parents=True, exist_ok=True)
        for i in range(self.gpus):
            path = dev / f"gpu{i}"
            if not path.exists():
                try:
                    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
                except OSError:
                    path.touch()
        return dev

    def stop(self) -> None:
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            path = self.state / pid_file
            if path.exists():
                try:
                    os.kill(int(path.read_text().strip()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)
        for path, text in getattr(self, "_old", {}).items():  # put back what was there before start()
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text)
