# Shared by the launch scripts (sourced, not run): TF_CONFIG, checks, quoting, waiting.
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

# A container image: [registry/]path[:tag][@sha256:digest].
IMAGE_PATTERN='^[a-z0-9][-a-zA-Z0-9._/:]*(@sha256:[0-9a-f]{64})?$'
# A Cloud Storage folder.
GS_PATTERN='^gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/[^[:cntrl:]]*)?$'

# Dies unless flag $1's value $2 is a number of GPUs, 0 to 99, in decimal digits without
# a leading zero: bash arithmetic reads 010 as octal 8, and 08 as an error.
check_gpus() {
  check_value "$1" "$2" '^(0|[1-9][0-9]?)$' \
    "a decimal number of GPUs from 0 to 99 without leading zeros; e.g. $1=1"
}

check_port() {
  check_value "$1" "$2" '^[1-9][0-9]{0,4}$' "a port number; use 1 to 65535"
  (($2 <= 65535)) || die "$1=$2 is not a port number; use 1 to 65535"
}

# Dies if a trainer flag holds a control character: no flag needs one, and a newline
# would end a line of a job file.
check_trainer_flags() {
  local flag
  for flag in "$@"; do
    [[ $flag != *[[:cntrl:]]* ]] ||
      die "trainer flag $(printf %q "$flag") holds a control character; remove it"
  done
}

# The value the trainer will use for its flag $1 (a name without dashes) among the
# trainer flags $2...: like absl, the last one wins, in any of the forms --NAME=VALUE,
# --NAME VALUE, -NAME=VALUE and -NAME VALUE; nothing after --. Empty if none is given.
flag_value() {
  local name=$1 value=''
  shift
  while (($#)); do
    case $1 in
      --) break ;;
      --"$name"=* | -"$name"=*) value=${1#*=} ;;
      --"$name" | -"$name")
        if (($# > 1)); then
          value=$2
          shift
        fi
        ;;
    esac
    shift
  done
  printf '%s' "$value"
}

# $1 as a JSON string, which YAML reads the same way. Control characters are refused
# before (check_value, check_trainer_flags), so only \ and " need escaping.
json_string() {
  local text=${1//\\/\\\\}
  printf '"%s"' "${text//\"/\\\"}"
}

# Its arguments as a JSON list of strings, which YAML reads as a flow sequence.
json_list() {
  local first=true arg
  printf '['
  for arg in "$@"; do
    $first || printf ', '
    json_string "$arg"
    first=false
  done
  printf ']'
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

# --dry-run in gce.sh, vertex.sh and k8s.sh: print commands and files instead.
DRY_RUN=false

# Runs a command, or with --dry-run prints it.
run() {
  if $DRY_RUN; then
    print_command "$@"
  else
    "$@"
  fi
}

# Writes a file, or with --dry-run prints the command that would.
write_file() {
  local path=$1 text=$2
  if $DRY_RUN; then
    printf "mkdir -p %q && cat > %q <<'EOF'\n%s\nEOF\n" "$(dirname "$path")" "$path" "$text"
  else
    mkdir -p "$(dirname "$path")"
    printf '%s\n' "$text" >"$path"
  fi
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
