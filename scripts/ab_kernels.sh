#!/usr/bin/env bash
# Two versions of kernels.py timed alternately in one machine session (the lookup backward through
# scripts/sweep_lookup.py, the defaults only), so that a code change is not confused with a machine's spread.
# Prepare the versions beside the repo root first, e.g.
#   git show main:kernels.py > kernels_main.py; git show <branch>:kernels.py > kernels_new.py
# then on the GPU: bash scripts/ab_kernels.sh "main new main new" [extra sweep_lookup.py arguments]
# (session 19, docs/BENCHMARKS.md: calls 6 and 7 ran it with "--tokens=4096 --shapes=a,b --graph" and
# "--tokens=32768 --shapes=a,b"; call 6 also ran scripts/lookup_balance.py --steps=10 --layers=0 per version).
# kernels.py is restored at the end; the kernels_*.py copies are left for the caller to remove.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
order=$1; shift
cp kernels.py kernels_ab_saved.py
trap 'mv kernels_ab_saved.py kernels.py' EXIT
for v in $order; do
  cp "kernels_$v.py" kernels.py
  python scripts/sweep_lookup.py --pass=bwd --grid=bwd_max_slots:2048 "$@" 2>&1 | grep "(defaults):" | sed "s/^/$v /"
done
