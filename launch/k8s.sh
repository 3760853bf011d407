#!/usr/bin/env bash
# Trains on Kubernetes: a Kubeflow TFJob of N pods that run the container image (Dockerfile).
#
#   launch/k8s.sh --image=REGISTRY/densenet:TAG --replicas=2 -- \
#       --flagfile=configs/mnist_rgb.cfg --run_dir=gs://BUCKET/runs/NAME
#
# See launch/README.md for a whole run, from the image to TensorBoard.
set -euo pipefail

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Where --pvc mounts the shared volume in every pod.
RUNS_MOUNT=/runs
# A Kubernetes object name (RFC 1123 subdomain): claims, service accounts.
K8S_NAME_PATTERN='^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$'

usage() {
  cat <<'EOF'
Usage: launch/k8s.sh --image=IMAGE [options] -- <trainer flags>

Writes a Kubeflow TFJob (kubeflow.org/v1; the cluster needs Kubeflow's training
operator) to LOG_DIR/tfjob.yaml and creates it with kubectl: a Chief pod and
--replicas - 1 Worker pods, each running the image, whose entry point is
python -m trainer.main, with the trainer flags and --num_gpus=GPUS (a later
--num_gpus wins) on GPUS nvidia.com/gpu. The operator gives each pod its TF_CONFIG.
All pods need one run folder: --run_dir=gs://BUCKET/runs/NAME among the trainer
flags, or --pvc and --run_dir=/runs/NAME on that shared volume.

  --image=IMAGE           the image, pushed where the cluster can pull it (required)
  --replicas=N            pods, one trainer each [2]
  --gpus=COUNT            GPUs per pod, 0 for none [1]
  --name=NAME             the TFJob's name [densenet]
  --namespace=NS          [kubectl's current namespace]
  --pvc=CLAIM             a PersistentVolumeClaim to mount at /runs in every pod
                          (ReadWriteMany when the pods can land on several nodes)
  --service_account=NAME  the pods' Kubernetes service account: with Workload
                          Identity, one that may write the gs:// run folder
  --log_dir=DIR           where tfjob.yaml is written [logs/k8s-<time>]
  --dry-run               print the TFJob and the command instead of running them
  --help                  show this help

A failed pod restarts (restartPolicy OnFailure, up to 3 times) and the run resumes
from its last finished epoch. To run the same job again, delete it first:
kubectl delete tfjob NAME.
EOF
}

main() {
  local image='' replicas=2 gpus=1 name=densenet namespace='' pvc='' service_account=''
  local log_dir
  log_dir="logs/k8s-$(date +%Y%m%d-%H%M%S)"
  while (($#)); do
    case $1 in
      --help | -h) usage; exit 0 ;;
      --dry-run) DRY_RUN=true ;;
      --image=*) image=${1#*=} ;;
      --replicas=*) replicas=${1#*=} ;;
      --gpus=*) gpus=${1#*=} ;;
      --name=*) name=${1#*=} ;;
      --namespace=*) namespace=${1#*=} ;;
      --pvc=*) pvc=${1#*=} ;;
      --service_account=*) service_account=${1#*=} ;;
      --log_dir=*) log_dir=${1#*=} ;;
      --) shift; break ;;
      *) die "unknown option $1; trainer flags go after --, see launch/k8s.sh --help" ;;
    esac
    shift
  done
  [[ -n $image ]] || die "give the image, e.g. --image=REGISTRY/densenet:1; see --help"
  check_value --image "$image" "$IMAGE_PATTERN" "an image; e.g. --image=REGISTRY/densenet:1"
  check_value --replicas "$replicas" '^[1-9][0-9]{0,2}$' "a number of pods; e.g. --replicas=2"
  check_gpus --gpus "$gpus"
  check_value --name "$name" "$NAME_PATTERN" \
    "a TFJob name; use lowercase letters, digits and hyphens, e.g. --name=mnist-rgb"
  [[ -z $namespace ]] || check_value --namespace "$namespace" "$NAME_PATTERN" \
    "a namespace; use lowercase letters, digits and hyphens"
  [[ -z $pvc ]] || check_value --pvc "$pvc" "$K8S_NAME_PATTERN" \
    "a PersistentVolumeClaim name; kubectl get pvc lists them"
  [[ -z $service_account ]] || check_value --service_account "$service_account" \
    "$K8S_NAME_PATTERN" "a service account name; kubectl get serviceaccounts lists them"
  check_value --log_dir "$log_dir" '^[^[:cntrl:]]+$' "a folder; e.g. --log_dir=logs/k8s"
  check_trainer_flags "$@"
  # A pod's own disk goes with the pod, and all pods must write one folder.
  local run_dir
  run_dir=$(flag_value run_dir "$@")
  [[ $run_dir == gs://* ]] || { [[ -n $pvc && $run_dir == "$RUNS_MOUNT"/* ]]; } ||
    die "the pods need a run folder they all see, and the last trainer flag --run_dir wins" \
      "(here: $(printf %q "${run_dir:-none}")); give --run_dir=gs://BUCKET/runs/NAME, or" \
      "--pvc=CLAIM and --run_dir=$RUNS_MOUNT/NAME"

  local file="$log_dir/tfjob.yaml"
  write_file "$file" "$(tfjob "$name" "$namespace" "$replicas" "$image" "$gpus" "$pvc" \
    "$service_account" "$@")"
  run kubectl create -f "$file"
}

# The TFJob. Arguments: NAME NAMESPACE REPLICAS IMAGE GPUS PVC SERVICE_ACCOUNT TRAINER FLAGS...
tfjob() {
  local name=$1 namespace=$2 replicas=$3
  shift 3
  echo 'apiVersion: kubeflow.org/v1'
  echo 'kind: TFJob'
  echo 'metadata:'
  echo "  name: $(json_string "$name")"
  [[ -z $namespace ]] || echo "  namespace: $(json_string "$namespace")"
  echo 'spec:'
  echo '  runPolicy:'
  echo '    cleanPodPolicy: None  # finished pods stay, and so do their logs'
  echo '    backoffLimit: 3  # restarts before the job fails, so a bad flag does not loop'
  echo '  tfReplicaSpecs:'
  replica_spec Chief 1 "$@"
  ((replicas == 1)) || replica_spec Worker "$((replicas - 1))" "$@"
}

# One entry of tfReplicaSpecs. Arguments: TYPE COUNT IMAGE GPUS PVC SERVICE_ACCOUNT FLAGS...
replica_spec() {
  local type=$1 count=$2 image=$3 gpus=$4 pvc=$5 service_account=$6
  shift 6
  echo "    $type:"
  echo "      replicas: $count"
  # A pod that fails (its node went, or a peer did) restarts, and the run resumes from
  # its last finished epoch; ExitCode would end the job on the peers' exit status 1.
  echo '      restartPolicy: OnFailure'
  echo '      template:'
  echo '        spec:'
  if [[ -n $service_account ]]; then
    echo "          serviceAccountName: $(json_string "$service_account")"
  fi
  echo '          containers:'
  echo '          - name: tensorflow'
  echo "            image: $(json_string "$image")"
  echo "            args: $(json_list "--num_gpus=$gpus" "$@")"
  if ((gpus)); then
    echo '            resources:'
    echo '              limits:'
    echo "                nvidia.com/gpu: $gpus"
  fi
  if [[ -n $pvc ]]; then
    echo '            volumeMounts:'
    echo '            - name: runs'
    echo "              mountPath: $RUNS_MOUNT"
    echo '          volumes:'
    echo '          - name: runs'
    echo '            persistentVolumeClaim:'
    echo "              claimName: $(json_string "$pvc")"
  fi
}

# One line: bash reads a script while it runs, so an edit (a git pull) during a long
# run would otherwise be read from the middle of a line once main returns.
main "$@"; exit
