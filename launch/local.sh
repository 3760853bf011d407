#!/usr/bin/env bash
# Runs N workers of the trainer on this machine, under MultiWorkerMirroredStrategy.
#
#   launch/local.sh 2 -- --dataset=synthetic --weights=none --run_dir=runs/two_workers
#
# Each worker is `$PYTHON -m trainer.main <trainer flags>` with its own TF_CONFIG on
# free localhost ports. Worker 0 is the chief: it alone writes the run folder.
set -euo pipefail

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PYTHON=${PYTHON:-python}

usage() {
  cat <<'EOF'
Usage: launch/local.sh [--dry-run] N -- <trainer flags>

Starts N processes of `python -m trainer.main <trainer flags>` on this machine,
each with a TF_CONFIG naming all N on free localhost ports, so that they train
one model together under MultiWorkerMirroredStrategy. Give them a --run_dir (or
--run_name): the chief writes there, and re-running the same command resumes.

  --dry-run   print the commands, with their TF_CONFIG, instead of running them
  --help      show this help

Environment: PYTHON (default: the python first on PATH) runs the workers.
Output lines are prefixed with [worker I]. When a worker fails, the others are
stopped and the script exits with the failed worker's status; 0 when all succeed.
EOF
}

# N ports that are free right now. All sockets are held open together so the N
# ports differ; another program could still take one before the workers bind it.
free_ports() {
  "$PYTHON" - "$1" <<'EOF'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
  s.bind(('localhost', 0))
print(' '.join(str(s.getsockname()[1]) for s in sockets))
EOF
}

# Copies its input to its output, each line prefixed with $1, as each line comes: awk
# and sed may hold lines back until a buffer fills (mawk does, on Debian and Ubuntu).
prefix_lines() {
  local line
  while IFS= read -r line || [[ -n $line ]]; do
    printf '%s%s\n' "$1" "$line"
  done
}

main() {
  local dry_run=false num_workers=''
  while (($#)); do
    case $1 in
      --help | -h) usage; exit 0 ;;
      --dry-run) dry_run=true ;;
      --) shift; break ;;
      -*) die "unknown option $1; see launch/local.sh --help" ;;
      *) [[ -z $num_workers ]] || die "unexpected argument $1; trainer flags go after --"
         num_workers=$1 ;;
    esac
    shift
  done
  [[ $num_workers =~ ^[1-9][0-9]*$ ]] ||
    die "give the number of workers, e.g. launch/local.sh 2 -- <trainer flags>; see --help"

  local port_list ports addresses=() port index
  port_list=$(free_ports "$num_workers")  # on its own line, so that a failure stops the script
  read -r -a ports <<<"$port_list"
  for port in "${ports[@]}"; do
    addresses+=("localhost:$port")
  done

  if $dry_run; then
    for ((index = 0; index < num_workers; index++)); do
      printf 'TF_CONFIG=%s ' "$(quote "$(tf_config "$index" "${addresses[@]}")")"
      print_command "$PYTHON" -m trainer.main "$@"
    done
    return 0
  fi

  # Python buffers piped output; unbuffered, the workers' lines appear as they happen.
  export PYTHONUNBUFFERED=1
  stop_workers_on_exit
  for ((index = 0; index < num_workers; index++)); do
    TF_CONFIG=$(tf_config "$index" "${addresses[@]}") "$PYTHON" -m trainer.main "$@" \
      > >(prefix_lines "[worker $index] ") 2>&1 &
    WORKER_PIDS+=("$!")
    WORKER_NAMES+=("worker $index")
  done
  wait_for_workers
  wait  # lets the output prefixers print their last lines
  echo "All $num_workers workers finished"
}

# One line: bash reads a script while it runs, so an edit (a git pull) during a long
# run would otherwise be read from the middle of a line once main returns.
main "$@"; exit
