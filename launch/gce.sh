#!/usr/bin/env bash
# Trains on N Compute Engine GPU VMs under MultiWorkerMirroredStrategy, in three steps:
#
#   launch/gce.sh --staging=gs://BUCKET/staging create      # N VMs; each installs the package
#   launch/gce.sh train -- --run_dir=gs://BUCKET/runs/NAME  # one worker per VM
#   launch/gce.sh delete                                    # the VMs, when done
#
# See launch/README.md for a whole run, from the bucket to TensorBoard.
set -euo pipefail

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# On the VMs: where the startup script installs the package, and the file it leaves when done.
VM_ROOT=/opt/densenet
VM_PYTHON=$VM_ROOT/venv/bin/python
# What the package needs beyond its own requirements there: TensorFlow's CUDA libraries and
# its gs:// file system (tensorflow-io-gcs-filesystem, wheels for Python <= 3.12).
VM_EXTRAS="tensorflow[and-cuda,gcs-filesystem]==2.21.*"

usage() {
  cat <<'EOF'
Usage: launch/gce.sh [options] create|train|delete [-- <trainer flags>]

  create   Creates the VMs NAME-0 ... NAME-(N-1). At first boot a startup script
           installs the package in /opt/densenet/venv: by default a wheel of this
           checkout, built here and copied to --staging; or --package.
  train    Starts one worker per VM over `gcloud compute ssh`, with TF_CONFIG built
           from the VM names (NAME-0 is the chief), and waits for them; each VM's
           output goes to LOG_DIR/VM.log. Needs --run_dir=gs://... among the trainer
           flags: the workers share that folder. Adds --num_gpus=GPUS (a later
           --num_gpus wins). Waits for the install first. Re-running it resumes.
  delete   Deletes the VMs.

Options (the defaults in brackets):
  --workers=N            VMs, one worker each [2]
  --name=NAME            VM name prefix [densenet]
  --project=PROJECT      [gcloud's default project]
  --zone=ZONE            [us-central1-a]
  --machine_type=TYPE    [n1-standard-8]
  --accelerator=TYPE     GPU type [nvidia-tesla-t4]
  --gpus=COUNT           GPUs per VM [1]
  --image_family=FAMILY  [common-cu128-ubuntu-2204-nvidia-570]
  --image_project=PROJ   [deeplearning-platform-release]
  --disk_size=SIZE       boot disk [100GB]
  --spot                 Spot VMs: cheaper, may be stopped at any time; start them
                         again (gcloud compute instances start) and re-run train
  --staging=gs://DIR     create: where the wheel of this checkout is copied
  --package=SPEC         create: pip requirement to install instead of that wheel
                         (e.g. git+https://github.com/ORG/REPO)
  --port=PORT            port the workers talk on, inside the VPC [2222]
  --log_dir=DIR          train: the per-VM logs [logs/gce-<time>]; create: the startup script
  --dry-run              print the commands instead of running them
  --help                 show this help
EOF
}

# The gcloud flags that say where the VMs are: --zone, and --project if given.
WHERE=()

main() {
  local command='' workers=2 name=densenet project='' zone=us-central1-a
  local machine_type=n1-standard-8 accelerator=nvidia-tesla-t4 gpus=1
  local image_family=common-cu128-ubuntu-2204-nvidia-570
  local image_project=deeplearning-platform-release disk_size=100GB spot=false
  local staging='' package='' port=2222 log_dir
  log_dir="logs/gce-$(date +%Y%m%d-%H%M%S)"
  while (($#)); do
    case $1 in
      --help | -h) usage; exit 0 ;;
      --dry-run) DRY_RUN=true ;;
      --workers=*) workers=${1#*=} ;;
      --name=*) name=${1#*=} ;;
      --project=*) project=${1#*=} ;;
      --zone=*) zone=${1#*=} ;;
      --machine_type=*) machine_type=${1#*=} ;;
      --accelerator=*) accelerator=${1#*=} ;;
      --gpus=*) gpus=${1#*=} ;;
      --image_family=*) image_family=${1#*=} ;;
      --image_project=*) image_project=${1#*=} ;;
      --disk_size=*) disk_size=${1#*=} ;;
      --spot) spot=true ;;
      --staging=*) staging=${1#*=} ;;
      --package=*) package=${1#*=} ;;
      --port=*) port=${1#*=} ;;
      --log_dir=*) log_dir=${1#*=} ;;
      create | train | delete) command=$1 ;;
      --) shift; break ;;
      *) die "unknown argument $1; see launch/gce.sh --help" ;;
    esac
    shift
  done
  [[ -n $command ]] || die "say what to do: create, train or delete; see --help"
  [[ $command == train || $# == 0 ]] ||
    die "trainer flags go only with train; drop them, or say train"
  check_value --workers "$workers" '^[1-9][0-9]{0,2}$' "a number of VMs; e.g. --workers=2"
  check_gpus --gpus "$gpus"
  check_port --port "$port"
  check_value --name "$name" "$NAME_PATTERN" \
    "a VM name prefix; use lowercase letters, digits and hyphens, e.g. --name=densenet"
  [[ -z $project ]] || check_value --project "$project" "$PROJECT_PATTERN" \
    "a project ID; give the ID that gcloud projects list shows"
  check_value --zone "$zone" "$GCLOUD_ID_PATTERN" "a zone name; e.g. --zone=us-central1-a"
  check_value --machine_type "$machine_type" "$GCLOUD_ID_PATTERN" \
    "a machine type; e.g. --machine_type=n1-standard-8"
  check_value --accelerator "$accelerator" "$GCLOUD_ID_PATTERN" \
    "a GPU type; e.g. --accelerator=nvidia-tesla-t4"
  check_value --image_family "$image_family" "$GCLOUD_ID_PATTERN" \
    "an image family; e.g. --image_family=common-cu128-ubuntu-2204-nvidia-570"
  check_value --image_project "$image_project" "$GCLOUD_ID_PATTERN" \
    "an image project; e.g. --image_project=deeplearning-platform-release"
  check_value --disk_size "$disk_size" '^[1-9][0-9]*(GB|TB)$' "a disk size; e.g. --disk_size=100GB"
  # The startup script's path goes into gcloud's comma-separated --metadata-from-file.
  check_value --log_dir "$log_dir" '^[^,[:cntrl:]]+$' "a folder; give one without commas"

  local vms=() index
  for ((index = 0; index < workers; index++)); do
    vms+=("$name-$index")
  done
  # Every gcloud command names the zone (and the project, if given).
  WHERE=("--zone=$zone")
  [[ -z $project ]] || WHERE+=("--project=$project")

  case $command in
    create)
      stage_package "$package" "$staging"
      local startup="$log_dir/startup.sh"
      write_file "$startup" "$(startup_script "$staging")"
      local create_flags=(
        "${WHERE[@]}" "--machine-type=$machine_type"
        "--image-family=$image_family" "--image-project=$image_project"
        "--boot-disk-size=$disk_size"
        # The workers read and write the gs:// run folder with the VM's service account.
        --scopes=cloud-platform
        "--metadata=install-nvidia-driver=True"
        "--metadata-from-file=startup-script=$startup"
      )
      if ((gpus)); then
        # VMs with GPUs cannot live-migrate: they stop for host maintenance.
        create_flags+=("--accelerator=type=$accelerator,count=$gpus" --maintenance-policy=TERMINATE)
      fi
      if $spot; then
        create_flags+=(--provisioning-model=SPOT --instance-termination-action=STOP)
      fi
      run gcloud compute instances create "${vms[@]}" "${create_flags[@]}"
      echo "# The VMs install the package at first boot (about 10 minutes); train waits for it."
      ;;
    train)
      local run_dir
      run_dir=$(flag_value run_dir "$@")
      [[ $run_dir == gs://* ]] ||
        die "train needs --run_dir=gs://BUCKET/runs/NAME among the trainer flags, and the" \
          "last --run_dir wins (here: $(printf %q "${run_dir:-none}")); give one: the workers share" \
          "that folder"
      start_workers "$port" "$gpus" "$log_dir" "${vms[@]}" -- "$@"
      ;;
    delete)
      run gcloud compute instances delete "${vms[@]}" "${WHERE[@]}" --quiet
      ;;
  esac
}

# What the VMs pip install: --package, or else a wheel of this checkout, which this
# builds and copies to the staging folder.
INSTALL=''
stage_package() {
  local package=$1 staging=$2
  if [[ -n $package ]]; then
    INSTALL=$package
    return
  fi
  [[ $staging == gs://* ]] ||
    die "create needs --staging=gs://BUCKET/DIR for the wheel of this checkout, or --package=SPEC"
  check_value --staging "$staging" "$GS_PATTERN" \
    "a Cloud Storage folder; e.g. --staging=gs://BUCKET/staging"
  local version wheel
  version=$(sed -n 's/^version *= *//p' "$REPO/setup.cfg")
  wheel="densenet_finetune-$version-py3-none-any.whl"
  run "${PYTHON:-python}" -m pip wheel --no-deps --wheel-dir="$REPO/dist" "$REPO"
  run gcloud storage cp "$REPO/dist/$wheel" "${staging%/}/$wheel"
  INSTALL=$VM_ROOT/$wheel
}

# The startup script: runs as root at every boot, installs once.
startup_script() {
  local staging=$1
  cat <<EOF
#!/bin/bash
# Installs the trainer in $VM_ROOT/venv; launch/gce.sh train waits for $VM_ROOT/READY.
# Its log: sudo journalctl -u google-startup-scripts
set -euxo pipefail
[[ -f $VM_ROOT/READY ]] && exit 0
mkdir -p $VM_ROOT
apt-get update && apt-get install -y python3-venv
python3 -m venv $VM_ROOT/venv
EOF
  if [[ $INSTALL == "$VM_ROOT"/* ]]; then
    printf 'gcloud storage cp %q %q\n' "${staging%/}/${INSTALL##*/}" "$INSTALL"
  fi
  printf '%q -m pip install --upgrade pip\n' "$VM_PYTHON"
  printf '%q -m pip install %q %q\n' "$VM_PYTHON" "$INSTALL" "$VM_EXTRAS"
  echo "touch $VM_ROOT/READY"
}

# Starts `gcloud compute ssh` to every VM in the background and waits for them.
# Arguments: PORT GPUS LOG_DIR VM... -- TRAINER FLAGS...
start_workers() {
  local port=$1 gpus=$2 log_dir=$3 vms=() addresses=()
  shift 3
  while [[ $1 != -- ]]; do
    vms+=("$1")
    addresses+=("$1:$port")  # VM names resolve inside the VPC (internal DNS)
    shift
  done
  shift

  $DRY_RUN || mkdir -p "$log_dir"
  stop_workers_on_exit
  local index script log ssh_command
  for index in "${!vms[@]}"; do
    script=$(worker_script "$gpus" "$(tf_config "$index" "${addresses[@]}")" "$@")
    log="$log_dir/${vms[index]}.log"
    # --quiet: no prompt (e.g. for an SSH key passphrase) from a command in the background.
    # The script goes in on stdin, so it needs no second layer of quoting.
    ssh_command=(gcloud compute ssh "${vms[index]}" "${WHERE[@]}" --quiet --command="bash -s")
    if $DRY_RUN; then
      echo "# worker $index on ${vms[index]}, log in $log"
      printf "%s <<'EOF'\n%s\nEOF\n" "$(print_command "${ssh_command[@]}")" "$script"
      continue
    fi
    "${ssh_command[@]}" <<<"$script" >"$log" 2>&1 &
    WORKER_PIDS+=("$!")
    WORKER_NAMES+=("worker $index on ${vms[index]} (log $log)")
    echo "Started worker $index on ${vms[index]}; log in $log"
  done
  $DRY_RUN && return 0
  wait_for_workers
  echo "All ${#vms[@]} workers finished; logs in $log_dir"
}

# What a VM runs: wait for the install (and the GPU driver), then the worker.
worker_script() {
  local gpus=$1 config=$2
  shift 2
  local ready="[[ -f $VM_ROOT/READY ]]"
  ((gpus == 0)) || ready+=" && nvidia-smi >/dev/null 2>&1"
  echo "until $ready; do echo 'waiting for the install'; sleep 10; done"
  printf 'TF_CONFIG=%s ' "$(quote "$config")"
  print_command "$VM_PYTHON" -m trainer.main "--num_gpus=$gpus" "$@"
}

# One line: bash reads a script while it runs, so an edit (a git pull) during a long
# run would otherwise be read from the middle of a line once main returns.
main "$@"; exit
