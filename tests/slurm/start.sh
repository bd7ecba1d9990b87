#!/usr/bin/env bash
# A real one-node SLURM cluster on 127.0.0.1 (2 CPUs) for the tests marked `slurm` (tests/test_slurm.py).
# As root: installs Debian's slurm-wlm and munge where missing, writes a config under $L2L_SLURM_STATE, starts
# munged, slurmctld and slurmd, and waits until sinfo shows the node idle. tests/slurm/stop.sh stops them.
# CI (.ci/run) runs both around the test suite.
set -euo pipefail
STATE=${L2L_SLURM_STATE:-/tmp/l2l-slurm}
if [ "$(id -u)" != 0 ]; then
  echo "tests/slurm/start.sh: needs root (it installs and starts SLURM)" >&2
  exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
"$(dirname "$0")/stop.sh" >/dev/null 2>&1 || true
rm -rf "$STATE"
mkdir -p "$STATE/spool" "$STATE/ctld" "$STATE/log" /etc/slurm /run/munge /var/lib/munge /var/log/munge /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
runuser -u munge -- /usr/sbin/munged
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
cat > /etc/slurm/slurm.conf <<CONF
# written by l2l's tests/slurm/start.sh: one node on 127.0.0.1, no accounting, no cgroups
ClusterName=l2l-test
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
KillWait=10
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
/usr/sbin/slurmctld
/usr/sbin/slurmd -N localhost
for _ in $(seq 60); do
  if sinfo --noheader --format=%t 2>/dev/null | grep -q idle; then
    echo "SLURM cluster up: $(sinfo --noheader --format='%P %D %t %N %c CPUs')"
    exit 0
  fi
  sleep 1
done
echo "tests/slurm/start.sh: the node did not become idle within 60 s; logs in $STATE/log" >&2
exit 1
