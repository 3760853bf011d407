#!/usr/bin/env bash
# Trains on Vertex AI: a custom job that runs the container image (Dockerfile) on N machines.
#
#   launch/vertex.sh --image=REGION-docker.pkg.dev/PROJECT/REPO/densenet:TAG \
#       --output_dir=gs://BUCKET/runs/NAME -- --flagfile=configs/mnist_rgb.cfg
#
# See launch/README.md for a whole run, from the image to TensorBoard.
set -euo pipefail

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/vertex.sh --image=URI [options] -- <trainer flags>

Submits a Vertex AI custom job (gcloud ai custom-jobs create) that runs the image,
whose entry point is python -m trainer.main, with the trainer flags and
--num_gpus=GPUS (a later --num_gpus wins) on --replicas machines: worker pool 0 is
the chief, worker pool 1 the other replicas. Vertex AI gives each replica its
TF_CONFIG. The job spec goes to LOG_DIR/job.yaml. The run folder must be on
Cloud Storage: --output_dir, or --run_dir=gs://... among the trainer flags.

  --image=URI           the image, pushed where Vertex AI can pull it (required)
  --output_dir=gs://DIR the job's output folder: the SavedModel goes to DIR/model/
                        (AIP_MODEL_DIR, what a Vertex AI model import reads) and,
                        unless the trainer flags give --run_dir, the run folder
                        is DIR/run/ and the TensorBoard logs go to DIR/logs/
  --tensorboard=NAME    a Vertex AI TensorBoard instance that shows the logs as
                        they are written, projects/P/locations/REGION/tensorboards/ID
                        in the job's region; needs --output_dir, no trainer
                        --run_dir, and --service_account
  --service_account=EMAIL  the service account the job runs as; it must be able to
                        write the output folder (and the TensorBoard instance)
  --replicas=N          machines, one trainer each [1]
  --machine_type=TYPE   [n1-standard-8]
  --accelerator=TYPE    GPU type, as Vertex AI spells it [NVIDIA_TESLA_T4]
  --gpus=COUNT          GPUs per machine, 0 for none [1]
  --region=REGION       [us-central1]
  --project=PROJECT     [gcloud's default project]
  --name=NAME           the job's display name [densenet-<time>]
  --log_dir=DIR         where the job spec is written [logs/vertex-<time>]
  --dry-run             print the job spec and the command instead of running them
  --help                show this help
EOF
}

main() {
  local image='' output_dir='' replicas=1 machine_type=n1-standard-8
  local accelerator=NVIDIA_TESLA_T4 gpus=1 region=us-central1 project='' name log_dir
  local tensorboard='' service_account=''
  name="densenet-$(date +%Y%m%d-%H%M%S)"
  log_dir="logs/vertex-${name#densenet-}"
  while (($#)); do
    case $1 in
      --help | -h) usage; exit 0 ;;
      --dry-run) DRY_RUN=true ;;
      --image=*) image=${1#*=} ;;
      --output_dir=*) output_dir=${1#*=} ;;
      --tensorboard=*) tensorboard=${1#*=} ;;
      --service_account=*) service_account=${1#*=} ;;
      --replicas=*) replicas=${1#*=} ;;
      --machine_type=*) machine_type=${1#*=} ;;
      --accelerator=*) accelerator=${1#*=} ;;
      --gpus=*) gpus=${1#*=} ;;
      --region=*) region=${1#*=} ;;
      --project=*) project=${1#*=} ;;
      --name=*) name=${1#*=} ;;
      --log_dir=*) log_dir=${1#*=} ;;
      --) shift; break ;;
      *) die "unknown option $1; trainer flags go after --, see launch/vertex.sh --help" ;;
    esac
    shift
  done
  [[ -n $image ]] ||
    die "give the image, e.g. --image=us-central1-docker.pkg.dev/PROJECT/REPO/densenet:1"
  check_value --image "$image" "$IMAGE_PATTERN" \
    "an image; e.g. --image=us-central1-docker.pkg.dev/PROJECT/REPO/densenet:1"
  check_value --replicas "$replicas" '^[1-9][0-9]{0,2}$' "a number of machines; e.g. --replicas=2"
  check_gpus --gpus "$gpus"
  check_value --machine_type "$machine_type" "$GCLOUD_ID_PATTERN" \
    "a machine type; e.g. --machine_type=n1-standard-8"
  check_value --accelerator "$accelerator" '^[A-Z][A-Z0-9_]*$' \
    "a Vertex AI GPU type; e.g. --accelerator=NVIDIA_TESLA_T4"
  check_value --region "$region" "$GCLOUD_ID_PATTERN" "a region; e.g. --region=us-central1"
  [[ -z $project ]] || check_value --project "$project" "$PROJECT_PATTERN" \
    "a project ID; give the ID that gcloud projects list shows"
  check_value --name "$name" '^[A-Za-z0-9][-A-Za-z0-9_.]{0,127}$' \
    "a job name; use letters, digits, '.', '_' and '-', e.g. --name=mnist-rgb"
  check_value --log_dir "$log_dir" '^[^[:cntrl:]]+$' "a folder; e.g. --log_dir=logs/vertex"
  [[ -z $output_dir ]] || check_value --output_dir "$output_dir" "$GS_PATTERN" \
    "a Cloud Storage folder; e.g. --output_dir=gs://BUCKET/runs/NAME"
  check_trainer_flags "$@"
  # The machines' disks go with the job, and the replicas must share the run folder.
  local run_dir
  run_dir=$(flag_value run_dir "$@")
  if [[ -n $run_dir ]]; then
    [[ $run_dir == gs://* ]] ||
      die "the trainer flag --run_dir=$(printf %q "$run_dir") (the last --run_dir wins) is not on" \
        "Cloud Storage; give --run_dir=gs://BUCKET/runs/NAME, or --output_dir=gs://BUCKET/runs/NAME" \
        "and no --run_dir"
  else
    [[ -n $output_dir ]] ||
      die "the run needs a Cloud Storage folder; give --output_dir=gs://BUCKET/runs/NAME" \
        "or the trainer flag --run_dir=gs://BUCKET/runs/NAME"
    # The trainer names its folder runs/NAME after --run_name, on the replica's own disk.
    [[ -z $(flag_value run_name "$@") ]] ||
      die "the trainer flag --run_name puts the run folder on the machine's disk, which goes" \
        "with the job; drop it (--output_dir names the run), or give --run_dir=gs://BUCKET/runs/NAME"
  fi

  check_tensorboard "$tensorboard" "$region" "$output_dir" "$run_dir" "$service_account"

  local spec="$log_dir/job.yaml"
  write_file "$spec" "$(job_spec "$image" "$output_dir" "$replicas" "$machine_type" \
    "$accelerator" "$gpus" "$service_account" "$tensorboard" "$@")"
  local create=(gcloud ai custom-jobs create "--region=$region" "--display-name=$name"
    "--config=$spec")
  [[ -z $project ]] || create+=("--project=$project")
  run "${create[@]}"
}

# Dies unless the --tensorboard and --service_account given can work together.
# Arguments: TENSORBOARD REGION OUTPUT_DIR RUN_DIR SERVICE_ACCOUNT
check_tensorboard() {
  local tensorboard=$1 region=$2 output_dir=$3 run_dir=$4 service_account=$5
  [[ -z $service_account ]] || check_value --service_account "$service_account" \
    '^[a-z0-9][-a-z0-9]*@[a-z0-9][-a-z0-9.]*[.]gserviceaccount[.]com$' \
    "a service account's email; e.g. --service_account=NAME@PROJECT.iam.gserviceaccount.com"
  [[ -n $tensorboard ]] || return 0
  check_value --tensorboard "$tensorboard" \
    '^projects/[-a-z0-9.:]+/locations/[a-z0-9-]+/tensorboards/[0-9]+$' \
    "a TensorBoard instance; e.g. --tensorboard=projects/PROJECT/locations/$region/tensorboards/ID"
  local location=${tensorboard#*/locations/}
  location=${location%%/*}
  [[ $location == "$region" ]] ||
    die "--tensorboard is in $location but the job in --region=$region; give" \
      "--region=$location, or an instance in $region"
  # Vertex AI streams AIP_TENSORBOARD_LOG_DIR (DIR/logs/), which it sets only for a job with
  # an output folder; the trainer writes there only for the run folder under it.
  [[ -n $output_dir && -z $run_dir ]] ||
    die "--tensorboard shows the logs under --output_dir, where the trainer writes them when" \
      "the trainer flags give no --run_dir; give --output_dir=gs://BUCKET/runs/NAME and drop --run_dir"
  [[ -n $service_account ]] ||
    die "--tensorboard needs --service_account=EMAIL: Vertex AI uploads the logs only for a job" \
      "that runs as a service account"
}

# The CustomJobSpec: the chief in worker pool 0, the other replicas in pool 1.
# Arguments: IMAGE OUTPUT_DIR REPLICAS MACHINE_TYPE ACCELERATOR GPUS SERVICE_ACCOUNT
#            TENSORBOARD TRAINER FLAGS...
job_spec() {
  local image=$1 output_dir=$2 replicas=$3 machine_type=$4 accelerator=$5 gpus=$6
  local service_account=$7 tensorboard=$8
  shift 8
  local pool_replicas pools=(1)
  ((replicas == 1)) || pools+=("$((replicas - 1))")
  echo 'workerPoolSpecs:'
  for pool_replicas in "${pools[@]}"; do
    echo '- machineSpec:'
    echo "    machineType: $(json_string "$machine_type")"
    if ((gpus)); then
      echo "    acceleratorType: $(json_string "$accelerator")"
      echo "    acceleratorCount: $gpus"
    fi
    echo "  replicaCount: $pool_replicas"
    echo '  containerSpec:'
    echo "    imageUri: $(json_string "$image")"
    echo "    args: $(json_list "--num_gpus=$gpus" "$@")"
  done
  if [[ -n $output_dir ]]; then
    echo 'baseOutputDirectory:'
    echo "  outputUriPrefix: $(json_string "$output_dir")"
  fi
  [[ -z $service_account ]] || echo "serviceAccount: $(json_string "$service_account")"
  [[ -z $tensorboard ]] || echo "tensorboard: $(json_string "$tensorboard")"
}

# One line: bash reads a script while it runs, so an edit (a git pull) during a long
# run would otherwise be read from the middle of a line once main returns.
main "$@"; exit
