#!/usr/bin/env bash
# Runs one trainer worker per host over SSH, under MultiWorkerMirroredStrategy.
#
#   launch/ssh.sh --hosts=gpu1,gpu2 -- --num_gpus=4 --run_dir=gs://BUCKET/runs/NAME
#
# The first host is the chief. Each worker's output goes to LOG_DIR/HOST.log here.
set -euo pipefail

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/ssh.sh --hosts=H1,H2,... [options] -- <trainer flags>

Starts `python -m trainer.main <trainer flags>` on every host over SSH, each with
a TF_CONFIG whose cluster is HOST:PORT for all hosts (the first is the chief), and
waits for them. Each host needs the package installed and passwordless SSH; the
hosts must reach each other on PORT. All workers must see the same --run_dir: a
gs:// folder (pip install 'tensorflow[gcs-filesystem]') or a shared file system.

  --hosts=H1,H2,...  SSH targets, [user@]host; the cluster uses the host part
  --port=PORT        port each worker listens on for the others (default 2222)
  --python=CMD       the interpreter on the hosts (default python3)
  --workdir=DIR      folder to cd into on the hosts first (default: the login folder)
  --log_dir=DIR      where the per-host logs go (default logs/ssh-<time>)
  --dry-run          print the commands, with their TF_CONFIG, instead of running them
  --help             show this help

When a worker fails, the script stops waiting for the others, ends their SSH
sessions and exits with its status; a remote worker left running stops on its own
once it misses the failed one (about a minute). Re-running the same command resumes.
EOF
}

main() {
  local dry_run=false hosts='' port=2222 python=python3 workdir='' log_dir=''
  log_dir="logs/ssh-$(date +%Y%m%d-%H%M%S)"
  while (($#)); do
    case $1 in
      --help | -h) usage; exit 0 ;;
      --dry-run) dry_run=true ;;
      --hosts=*) hosts=${1#*=} ;;
      --port=*) port=${1#*=} ;;
      --python=*) python=${1#*=} ;;
      --workdir=*) workdir=${1#*=} ;;
      --log_dir=*) log_dir=${1#*=} ;;
      --) shift; break ;;
      *) die "unknown option $1; trainer flags go after --, see launch/ssh.sh --help" ;;
    esac
    shift
  done
  [[ -n $hosts ]] || die "give the hosts, e.g. --hosts=gpu1,gpu2; see --help"
  check_port --port "$port"

  local targets addresses=() target
  IFS=, read -r -a targets <<<"$hosts"
  for target in "${targets[@]}"; do
    [[ $target =~ ^([A-Za-z0-9._-]+@)?[A-Za-z0-9._-]+$ ]] ||
      die "--hosts entry '$target' is not [user@]host; separate hosts with commas"
    # ssh would take it for an option (-F reads another config file, -o sets anything).
    [[ $target != -* && $target != *@-* ]] ||
      die "--hosts entry '$target' starts with '-', which ssh reads as an option; give" \
        "[user@]host names"
    addresses+=("${target#*@}:$port")
  done

  $dry_run || mkdir -p "$log_dir"
  stop_workers_on_exit
  local index script log
  for index in "${!targets[@]}"; do
    target=${targets[index]}
    script=$(worker_script "$workdir" "$(tf_config "$index" "${addresses[@]}")" "$python" "$@")
    log="$log_dir/${target#*@}.log"
    if $dry_run; then
      echo "# worker $index on $target, log in $log"
      printf "ssh -o BatchMode=yes %q bash -s <<'EOF'\n%s\nEOF\n" "$target" "$script"
      continue
    fi
    # The script goes in on stdin, so it needs no second layer of quoting. BatchMode:
    # fail at once rather than prompt for a password in the background.
    ssh -o BatchMode=yes "$target" bash -s <<<"$script" >"$log" 2>&1 &
    WORKER_PIDS+=("$!")
    WORKER_NAMES+=("worker $index on $target (log $log)")
    echo "Started worker $index on $target; log in $log"
  done
  $dry_run && return 0
  wait_for_workers
  echo "All ${#targets[@]} workers finished; logs in $log_dir"
}

# What a host runs:  cd WORKDIR; TF_CONFIG='...' PYTHON -m trainer.main FLAGS
worker_script() {
  local workdir=$1 config=$2 python=$3
  shift 3
  # shellcheck disable=SC2088  # a literal ~: it is to expand on the host, not here
  if [[ $workdir == '~/'* ]]; then
    printf 'cd ~/%q || exit\n' "${workdir#'~/'}"
  elif [[ -n $workdir ]]; then
    printf 'cd %q || exit\n' "$workdir"
  fi
  printf 'TF_CONFIG=%s ' "$(quote "$config")"
  print_command "$python" -m trainer.main "$@"
}

# One line: bash reads a script while it runs, so an edit (a git pull) during a long
# run would otherwise be read from the middle of a line once main returns.
main "$@"; exit
