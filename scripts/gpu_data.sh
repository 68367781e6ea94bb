#!/usr/bin/env bash
# medium_mix for the GPU scripts (gpu_foundation, gpu_memory, gpu_results, gpu_pair): tokenised into
# data/medium_mix from the copy carried in .device_carry/ (the device machine has no network), unless it is
# there already. Prints the preparation's last lines.
set -euo pipefail
[ -f data/medium_mix/train.bin ] || python data/prepare.py --input=.device_carry/medium_mix.jsonl.xz \
    --out_dir=data/medium_mix --val_fraction=0.02 --workers=16 | tail -3
