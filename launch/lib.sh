# Shared by local.sh, ssh.sh and gce.sh (sourced, not run): TF_CONFIG, quoting, waiting.
# shellcheck shell=bash
# shellcheck disable=SC2034  # the *_PATTERN values are for the scripts that source it

die() {
  echo "error: $*" >&2
  exit 2
}

# The TF_CONFIG of worker $1 in the cluster of the host:port addresses that follow.
# Every worker gets the same cluster; only the index differs. Worker 0 is the chief.
tf_config() {
  local index=$1
  shift
  local workers
  workers=$(printf '"%s", ' "$@")
  printf '{"cluster": {"worker": [%s]}, "task": {"type": "worker", "index": %d}}' \
    "${workers%, }" "$index"
}

# $1 in single quotes, for a script that another shell reads: safe whatever $1 holds.
quote() {
  printf "'%s'" "${1//\'/\'\\\'\'}"
}

# Values from the command line end up in scripts other shells run, in file paths, in
# gcloud's comma-separated flags and in YAML, so each must match a pattern first.
# Dies unless flag $1's value $2 matches the extended regular expression $3; $4 says
# what the value should be and how to fix it. %q keeps the message on one line.
check_value() {
  [[ $2 =~ $3 ]] || die "$1=$(printf %q "$2") is not $4"
}

# A Compute Engine or Kubernetes name: lowercase letters, digits and inner hyphens
# (RFC 1035), short enough for the suffixes the scripts add (-0, -worker-12).
NAME_PATTERN='^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$'
# A gcloud zone, region, machine type, GPU type or image name.
GCLOUD_ID_PATTERN='^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'
# A Google Cloud project ID, with the domain of a domain-scoped project if it has one.
PROJECT_PATTERN='^([a-z][-a-z0-9.]*[a-z0-9]:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$'

check_port() {
  check_value "$1" "$2" '^[1-9][0-9]{0,4}$' "a port number; use 1 to 65535"
  (($2 <= 65535)) || die "$1=$2 is not a port number; use 1 to 65535"
}

# Prints its arguments as one shell command line, each quoted so it can be pasted back.
print_command() {
  local first=true arg
  for arg in "$@"; do
    $first || printf ' '
    printf '%q' "$arg"
    first=false
  done
  printf '\n'
}

# Background workers: their pids and names, filled in by the scripts.
WORKER_PIDS=()
WORKER_NAMES=()

# Ends the workers still running. SIGKILL: TensorFlow's multi-worker runtime catches
# SIGTERM (to notice preemption) and goes on running. Losing the epoch in flight costs
# nothing that matters: a re-run resumes from the last finished one.
stop_workers() {
  if ((${#WORKER_PIDS[@]})); then
    kill -KILL "${WORKER_PIDS[@]}" 2>/dev/null || true
  fi
}

# Stops the workers whenever the script ends: done, failed, interrupted or killed
# (bash runs the EXIT trap on a signal only when a trap for that signal exits).
stop_workers_on_exit() {
  trap stop_workers EXIT
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# Waits until every worker has exited. When one fails, the others cannot go on without
# it, so they are stopped at once; returns the failed worker's status, else 0.
# Polls rather than `wait -n`, which the bash of macOS (3.2) lacks.
wait_for_workers() {
  local index status
  while ((${#WORKER_PIDS[@]})); do
    sleep 1
    for index in "${!WORKER_PIDS[@]}"; do
      if kill -0 "${WORKER_PIDS[index]}" 2>/dev/null; then
        continue  # still running
      fi
      status=0
      wait "${WORKER_PIDS[index]}" || status=$?
      unset 'WORKER_PIDS[index]'
      if ((status)); then
        echo "error: ${WORKER_NAMES[index]} exited with status $status; stopping the other workers" >&2
        stop_workers
        return "$status"
      fi
    done
  done
}
