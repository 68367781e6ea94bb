# CUDA MPS (Multi-Process Service) for one GPU, shared by gpu_pair.sh and gpu_mps_ab.sh (they source this file).
# A control daemon per GPU, its pipes and logs in DIR/pipe and DIR/log; its clients reach it through
# CUDA_MPS_PIPE_DIRECTORY=DIR/pipe with CUDA_VISIBLE_DEVICES=0: a client counts the devices its daemon sees (one),
# and torch checks its device count against NVML's, which without the variable sees every GPU of the host (session
# 9: 'device >= 0 && device < num_gpus INTERNAL ASSERT FAILED ... device=1, num_gpus=1'). CUDA falls back to
# running without MPS, silently, when it cannot reach the daemon: mps_start therefore checks that a CUDA context
# opens through it and that the daemon then runs a server. DRY=1 prints the daemon commands instead.
mps_ctl() {  # DIR, then nvidia-cuda-mps-control's arguments
  local dir=$1; shift
  CUDA_MPS_PIPE_DIRECTORY=$dir/pipe CUDA_MPS_LOG_DIRECTORY=$dir/log ${DRY:+echo} nvidia-cuda-mps-control "$@"
}
mps_start() {  # DIR GPU: start GPU's daemon and check that it serves; non-zero with a message if not
  local dir=$1 g=$2
  mkdir -p "$dir/pipe" "$dir/log"
  CUDA_VISIBLE_DEVICES=$g mps_ctl "$dir" -d || { echo "MPS: the daemon for GPU $g did not start" >&2; return 2; }
  [ -n "${DRY:-}" ] && return 0
  CUDA_VISIBLE_DEVICES=0 CUDA_MPS_PIPE_DIRECTORY="$dir/pipe" timeout 120 python -c "import torch; torch.ones(1, device='cuda')" \
    && [ -n "$(echo get_server_list | mps_ctl "$dir")" ] \
    || { echo "MPS: no MPS server serves GPU $g (logs in $dir/log)" >&2; cat "$dir/log"/*.log >&2; return 2; }
  echo "MPS: GPU $g served by server $(echo get_server_list | mps_ctl "$dir")"
}
mps_quit() {  # DIR
  echo quit | mps_ctl "$1"
}
