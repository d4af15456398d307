#!/usr/bin/env bash
# A one-machine Slurm cluster for tests (Debian's slurm-wlm + munge; run as root; no cgroups).
#   tests/slurm/cluster.sh install          apt-get the packages (CI: call once before the tests)
#   tests/slurm/cluster.sh start DIR        write DIR/slurm.conf, start munged, slurmctld, slurmd; wait until idle
#   tests/slurm/cluster.sh stop DIR         stop the daemons this script started (by their pid files)
# Clients need SLURM_CONF=DIR/slurm.conf.
set -euo pipefail
cmd=${1:?install|start|stop}

install() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

start() {
    local dir=${1:?DIR}; dir=$(realpath -m "$dir")
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
    local host; host=$(hostname -s)
    cat > "$dir/slurm.conf" <<CONF
ClusterName=probmedtest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
CredType=cred/munge
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
# test pending jobs every second, not every 60 s: a requeued job starts as soon as it is eligible again
SchedulerParameters=sched_interval=1
MpiDefault=none
ReturnToService=2
JobRequeue=1
# cred_expire (AuthInfo above) also bounds how long a requeued job waits before it may start again
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
    # munge: a private key and socket under DIR (the system's munged, if any, is left alone)
    if [ ! -f "$dir/munge/munge.key" ]; then
        dd if=/dev/urandom of="$dir/munge/munge.key" bs=1 count=1024 status=none
    fi
    chmod 700 "$dir/munge"; chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/seed"
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -f "$dir/slurm.conf"
    slurmd -f "$dir/slurm.conf"
    for _ in $(seq 60); do
        if sinfo -h -o %t 2>/dev/null | grep -q idle; then echo "slurm up: $(sinfo -h -o '%P %D %t %c')"; return 0; fi
        sleep 1
    done
    echo "slurm did not come up; logs:" >&2
    tail -n 30 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
    return 1
}

stop() {
    local dir=${1:?DIR}; dir=$(realpath -m "$dir")
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        [ -f "$pidfile" ] || continue
        local pid; pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

"$cmd" "${@:2}"
