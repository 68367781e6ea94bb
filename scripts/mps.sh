# CUDA MPS (Multi-Process Service) for one GPU, shared by gpu_pair.sh and gpu_mps_ab.sh (they source this file).
# A control daemon per GPU, its pipes and logs in DIR/pipe and DIR/log; its clients reach it through
# CUDA_MPS_PIPE_DIRECTORY=DIR/pipe and must not set CUDA_VISIBLE_DEVICES (NVIDIA's MPS guide). CUDA falls back to
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
  env -u CUDA_VISIBLE_DEVICES CUDA_MPS_PIPE_DIRECTORY="$dir/pipe" timeout 120 python -c "import torch; torch.ones(1, device='cuda')" \
    && [ -n "$(echo get_server_list | mps_ctl "$dir")" ] \
    || { echo "MPS: no MPS server serves GPU $g (logs in $dir/log)" >&2; cat "$dir/log"/*.log >&2; return 2; }
  echo "MPS: GPU $g served by server $(echo get_server_list | mps_ctl "$dir")"
}
mps_quit() {  # DIR
  echo quit | mps_ctl "$1"
}
