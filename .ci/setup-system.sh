#!/usr/bin/env bash
# System packages some tests need (SLURM for the cluster test; Java 17+ for Spark, urls.distributor: pyspark).
# Idempotent; quiet when already there.
set -euo pipefail
need=()
for pkg in slurmctld slurmd slurm-client munge openjdk-17-jre-headless; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "setup-system: need root to install ${need[*]}" >&2; exit 1; fi
  apt-get update -qq
  mkdir -p /usr/share/man/man1  # slim Debian images lack it and openjdk's postinst fails without it
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 || true
fi
