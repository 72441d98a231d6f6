#!/usr/bin/env bash
# A single-node SLURM on this machine for testing the pipeline's cluster profile: munge,
# MariaDB + slurmdbd (so that sacct works), slurmctld and slurmd, all on localhost, CPU only.
#
#   tests/cluster/slurm.sh install   # Debian packages (root; needs the package registry)
#   tests/cluster/slurm.sh up        # configure and start everything under $SLURM_TEST_DIR
#   tests/cluster/slurm.sh down      # stop everything and delete $SLURM_TEST_DIR
#
# Run as root. Known to work: Debian 12's slurm-wlm 22.05.8 and munge 0.5.15, with
# snakemake 9.27.1 and snakemake-executor-plugin-slurm 2.8.0.
set -euo pipefail

DIR=${SLURM_TEST_DIR:-/tmp/reproml-slurm}
HOST=$(hostname -s)
CLUSTER=reproml-test

install() {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null
}

wait_for() {  # wait_for <seconds> <command...>
    local limit=$1; shift
    for _ in $(seq "$limit"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    echo "slurm.sh: timed out waiting for: $*" >&2
    return 1
}

up() {
    mkdir -p "$DIR"/{db,state,spool,log,munge}
    # The node claims 64 GB whatever it has (config_overrides), so that the profile's memory
    # requests, sized for real clusters, are tested as they are; nothing here enforces them.
    local cpus mem=65536
    cpus=$(nproc)

    # munge: the key comes with the package; the daemon on its default socket, which every
    # SLURM client looks for
    mkdir -p /run/munge
    chown munge:munge "$DIR/munge" /run/munge
    runuser -u munge -- /usr/sbin/munged --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"

    # MariaDB for slurmdbd, on a private socket and port
    mariadb-install-db --user=root --datadir="$DIR/db" --auth-root-authentication-method=normal >/dev/null
    mariadbd --user=root --datadir="$DIR/db" --socket="$DIR/mysql.sock" --port=3307 --bind-address=127.0.0.1 \
        --pid-file="$DIR/mysql.pid" --log-error="$DIR/log/mariadb.log" >/dev/null 2>&1 &
    wait_for 60 mariadb --socket="$DIR/mysql.sock" -u root -e "select 1"
    mariadb --socket="$DIR/mysql.sock" -u root -e \
        "create user if not exists 'slurm'@'localhost' identified by 'slurm';
         grant all on slurm_acct_db.* to 'slurm'@'localhost'; flush privileges;"

    cat > "$DIR/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
    chmod 600 "$DIR/slurmdbd.conf"

    cat > "$DIR/slurm.conf" <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$HOST
AuthType=auth/munge
SlurmUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=600
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
AccountingStoreFlags=job_comment
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
    # Job steps (srun inside a job) read the default location, whatever SLURM_CONF said at submission
    mkdir -p /etc/slurm
    ln -sf "$DIR/slurm.conf" /etc/slurm/slurm.conf
    ln -sf "$DIR/slurmdbd.conf" /etc/slurm/slurmdbd.conf

    /usr/sbin/slurmdbd
    wait_for 60 sacctmgr -i list cluster
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || true
    sacctmgr -i add account reproml Cluster="$CLUSTER" >/dev/null || true
    sacctmgr -i add user root Account=reproml Cluster="$CLUSTER" >/dev/null || true
    /usr/sbin/slurmctld -f "$DIR/slurm.conf"
    /usr/sbin/slurmd -f "$DIR/slurm.conf"
    wait_for 60 bash -c "sinfo -h -o %t | grep -q idle"
    echo "SLURM is up (configuration: /etc/slurm/slurm.conf -> $DIR/slurm.conf)"
}

down() {
    for pidfile in slurmd.pid slurmctld.pid slurmdbd.pid mysql.pid munge/munged.pid; do
        if [[ -f "$DIR/$pidfile" ]]; then kill "$(cat "$DIR/$pidfile")" 2>/dev/null || true; fi
    done
    sleep 2
    for conf in slurm.conf slurmdbd.conf; do
        if [[ "$(readlink /etc/slurm/$conf)" == "$DIR/$conf" ]]; then rm -f "/etc/slurm/$conf"; fi
    done
    rm -rf "$DIR"
}

case "${1:-}" in
    install) install ;;
    up) up ;;
    down) down ;;
    *) echo "usage: $0 install|up|down" >&2; exit 2 ;;
esac
