#!/usr/bin/env bash
# `make test-slurm`: a real one-node SLURM cluster on this machine (root, Debian/Ubuntu),
# then the tests marked `slurm` (tests/test_slurm.py) through profiles/slurm.
#
# Installs slurm-wlm and munge with apt-get when missing, starts munged (as the munge
# user), writes a minimal /etc/slurm/slurm.conf (state, spool, pid and log files in a
# scratch folder), starts slurmctld and slurmd, waits for the node to be idle, runs
# pytest, and always stops the daemons it started (by their pid files).
#
# Environment:
#   SLURM_TEST_SCRATCH    scratch folder (default: a new /tmp/pole-slurm.XXXXXX; kept for the logs)
#   SLURM_TEST_PARTITION  partition name (default: debug)
#   POLE_SLURM_TARGET     what tests/test_slurm.py builds (default: the full smoke DAG)
#   PYTEST_ARGS           extra pytest arguments (e.g. "-s" to see the run summaries live)
set -euo pipefail

cd "$(dirname "$0")/../.."
REPO=$(pwd)
PY="$REPO/.venv/bin/python"

die() {
    echo "run_slurm_test: ERROR: $*" >&2
    exit 1
}
note() { echo "run_slurm_test: $*"; }

[[ $(id -u) -eq 0 ]] || die "needs root (it installs packages, writes /etc/slurm/slurm.conf and starts daemons)"
[[ -x $PY ]] || die "$PY not found: run 'make venv' first"

# --- packages ------------------------------------------------------------------------------
need_install=0
for exe in slurmctld slurmd sbatch squeue sinfo munged munge; do
    command -v "$exe" >/dev/null 2>&1 || need_install=1
done
if ((need_install)); then
    command -v apt-get >/dev/null 2>&1 || die "slurm-wlm/munge missing and no apt-get to install them"
    note "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update && apt-get install -y slurm-wlm munge
fi

# --- scratch, and the clean-up that always runs ------------------------------------------
SCRATCH=${SLURM_TEST_SCRATCH:-$(mktemp -d /tmp/pole-slurm.XXXXXX)}
mkdir -p "$SCRATCH"/{state,spool,log}
SCRATCH=$(cd "$SCRATCH" && pwd)
PARTITION=${SLURM_TEST_PARTITION:-debug}
NODE=$(hostname -s)
STARTED_PIDFILES=() # daemons this script started, stopped in reverse order on exit

stop_pidfile() {
    local pidfile=$1 pid i
    [[ -s $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    echo "run_slurm_test: pid $pid ($pidfile) still alive after 10 s, sending KILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    for ((i = ${#STARTED_PIDFILES[@]} - 1; i >= 0; i--)); do
        stop_pidfile "${STARTED_PIDFILES[i]}"
    done
    ((${#STARTED_PIDFILES[@]})) && note "stopped the daemons it started; logs in $SCRATCH/log"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

show_logs() {
    local f
    for f in "$SCRATCH"/log/*.log; do
        [[ -f $f ]] || continue
        echo "----- tail of $f" >&2
        tail -n 25 "$f" >&2
    done
}

# --- munge ---------------------------------------------------------------------------------
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    note "munged already running: using it"
else
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key missing (reinstall munge, or run mungekey as root)"
    rm -f /run/munge/munged.pid
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid ||
        die "munged did not start (see /var/log/munge/munged.log)"
    STARTED_PIDFILES+=(/run/munge/munged.pid)
    for _ in $(seq 1 25); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.2
    done
    munge -n | unmunge >/dev/null || die "munged started but does not answer (see /var/log/munge/munged.log)"
    note "munged started (pid $(cat /run/munge/munged.pid))"
fi

# --- slurm.conf ----------------------------------------------------------------------------
for d in slurmctld slurmd; do
    # detection only: a cluster already running here would be reconfigured under its feet
    if pid=$(pgrep -x "$d" | tr "\n" " "); [[ -n $pid ]]; then
        die "a $d is already running (pid $pid); stop it first - this script starts its own cluster"
    fi
done

NCPU=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MB=$((MEM_MB * 8 / 10)) # below the machine's memory, room for the OS and Snakemake itself
mkdir -p /etc/slurm
if [[ -f /etc/slurm/slurm.conf ]] && ! grep -q '^# written by tests/slurm/run_slurm_test.sh' /etc/slurm/slurm.conf; then
    cp /etc/slurm/slurm.conf "$SCRATCH/slurm.conf.before"
    note "existing /etc/slurm/slurm.conf saved to $SCRATCH/slurm.conf.before"
fi
cat >/etc/slurm/slurm.conf <<CONF
# written by tests/slurm/run_slurm_test.sh: one-node test cluster, no accounting
ClusterName=poletest
SlurmctldHost=$NODE
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
# finished jobs stay visible to squeue this long (the plugin's status checks without sacct)
MinJobAge=600
StateSaveLocation=$SCRATCH/state
SlurmdSpoolDir=$SCRATCH/spool
SlurmctldPidFile=$SCRATCH/slurmctld.pid
SlurmdPidFile=$SCRATCH/slurmd.pid
SlurmctldLogFile=$SCRATCH/log/slurmctld.log
SlurmdLogFile=$SCRATCH/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE CPUs=$NCPU RealMemory=$REAL_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
note "slurm.conf: node $NODE, CPUs=$NCPU, RealMemory=$REAL_MB MB (machine: $MEM_MB MB), partition $PARTITION, scratch $SCRATCH"

# --- daemons -------------------------------------------------------------------------------
slurmctld -i || {
    show_logs
    die "slurmctld did not start"
}
STARTED_PIDFILES+=("$SCRATCH/slurmctld.pid")
slurmd || {
    show_logs
    die "slurmd did not start"
}
STARTED_PIDFILES+=("$SCRATCH/slurmd.pid")

state=""
for _ in $(seq 1 60); do
    state=$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n 1 || true)
    [[ $state == idle ]] && break
    sleep 1
done
if [[ $state != idle ]]; then
    sinfo -N -l >&2 || true
    sinfo -R >&2 || true
    show_logs
    die "node $NODE is '${state:-unknown}' after 60 s, not idle: the cluster did not come up"
fi
note "cluster up: $(sinfo -h -o '%P %a %D %T %C' | head -n 1) (partition avail nodes state cpus A/I/O/T)"

# --- the tests -----------------------------------------------------------------------------
export POLE_SLURM_LOG="$SCRATCH/log/slurmctld.log"
export POLE_SLURM_PARTITION="$PARTITION"
export POLE_SLURM_MEM_MB="$REAL_MB"
export POLE_SLURM_CPUS="$NCPU"
# shellcheck disable=SC2086
"$PY" -m pytest -q -m slurm tests/test_slurm.py ${PYTEST_ARGS:-}
