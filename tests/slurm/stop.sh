#!/usr/bin/env bash
# Stop what tests/slurm/start.sh started (jobs first).
STATE=${L2L_SLURM_STATE:-/tmp/l2l-slurm}
scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
for daemon in slurmd slurmctld; do
  if [ -f "$STATE/$daemon.pid" ]; then kill "$(cat "$STATE/$daemon.pid")" 2>/dev/null || true; fi
  pkill -x "$daemon" 2>/dev/null || true
done
pkill -x munged 2>/dev/null || true
sleep 1
exit 0
