#!/usr/bin/env bash
# Bring up a single-node SLURM (tests/cluster/slurm.sh), run the smoke DAG through
# profiles/slurm on a copy of this working tree, check the report and the jobs in sacct,
# and tear everything down. Run as root from the repository root, in the environment the
# README installs plus the SLURM extra:
#
#   pip install -e ".[test,slurm]"
#   bash tests/cluster/slurm.sh install    # once: Debian's slurm-wlm, slurmdbd, munge, MariaDB
#   bash tests/cluster/run_smoke.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/reproml-cluster-XXXXXX)
chmod 755 "$WORK"  # the munge daemon runs as its own user
export SLURM_TEST_DIR=${SLURM_TEST_DIR:-$WORK/slurm}
finish() {
    local status=$?
    if [[ $status -ne 0 ]]; then  # show why before the evidence is deleted
        find "$WORK/repo/.snakemake/slurm_logs" -name '*.log' -exec tail -n 15 {} + 2>/dev/null || true
    fi
    bash "$ROOT/tests/cluster/slurm.sh" down
    rm -rf "$WORK"
    exit $status
}
trap finish EXIT

bash "$ROOT/tests/cluster/slurm.sh" up
export REPROML_SLURM_PARTITION=debug REPROML_SLURM_ACCOUNT=reproml

mkdir "$WORK/repo"
(cd "$ROOT" && git ls-files -co --exclude-standard | tar -cf - -T -) | tar -xf - -C "$WORK/repo"
cd "$WORK/repo"
# CPU-only test cluster: no GPUs to ask for (the profile's device: cuda is for real clusters)
snakemake --profile profiles/slurm --configfile config/smoke.yaml --config device=cpu

test -s results/report/report.html && test -s results/summary.csv
echo "report: $(wc -c < results/report/report.html) bytes; summary rows: $(($(wc -l < results/summary.csv) - 1))"
sacct -X --format=JobID%6,Comment%52,Partition%9,Account%8,AllocCPUS%5,State%10,ExitCode,Elapsed
states=$(sacct -X -n -P --format=State)
completed=$(grep -c '^COMPLETED$' <<< "$states" || true)
failed=$(grep -vc '^COMPLETED$' <<< "$states" || true)
echo "sacct: $completed jobs completed, $failed not"
test "$completed" -gt 0 && test "$failed" -eq 0
