#!/usr/bin/env bash
# The GPU check: one command, at most 8 minutes on one GPU, with no network and nothing
# installed by it. Run from anywhere:
#
#   bash benchmarks/gpu_check.sh [--quick] [--mnist_idx=DIR] [--out=DIR] [benchmarks.run flags]
#
# It checks first, in one line each if something is missing: that PYTHON has the modules
# the trainer imports, that TensorFlow sees a GPU (10 s), that the MNIST files are there.
# Then it runs `python -m benchmarks.run --suite=gpu_check`, which measures, one child
# process each, in this order (the time each is expected to take on an H200, 16 cores):
#
#   visible GPUs, and what --precision=auto picks there                    15 s
#   float32 img/s; then the placement check: the resize and the adapter    45 s
#     (and the whole forward pass) run under tf.device('/GPU:0') with
#     soft placement off, so an op with no GPU kernel would fail
#   mixed_float16 img/s, mixed_bfloat16 img/s                          2 x 45 s
#   2 epochs of configs/mnist_rgb.cfg on real MNIST at 64x64 from a       110 s
#     random start, through trainer.main (--noexport)
#   --num_gpus=2's MirroredStrategy on two logical GPUs carved from one    60 s
#   steps_per_execution=10                                                 45 s
#   XLA (jit_compile)                                                     120 s
#
# within 450 s in all (--budget_s): a measurement starts only if its expected time still
# fits and is stopped when the time is up; its row then says so. It prints each one's
# elapsed time, then the tables (markdown, for benchmarks/RESULTS.md), and writes:
#   OUT/gpu_check.md                 the tables
#   OUT/records/gpu_check/*.json     their records: copy them into benchmarks/records/
#   OUT/child_logs.txt               every child process's log
#
# PYTHON (default python3) must have this project's requirements (TensorFlow 2.21 with its
# CUDA libraries, tf_keras, tensorflow-datasets, absl-py); pass --commit=SHA when the tree
# is a copy without git. The MNIST files: --mnist_idx=DIR or MNIST_IDX (default
# runs/mnist_idx), the four files train-images-idx3-ubyte.gz ... (gzipped or not).
# --quick: small sizes, and with no GPU the CPU stands in (two logical CPUs for the two
# logical GPUs, 3 steps an epoch): proves the script runs, in a few minutes on a CPU.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

# Folders given on the command line are relative to where it was typed.
absolute() {
  case $1 in
    /*) echo "$1" ;;
    *) echo "$PWD/$1" ;;
  esac
}

PYTHON=${PYTHON:-python3}
mnist_idx=$repo/runs/mnist_idx
[[ -z ${MNIST_IDX:-} ]] || mnist_idx=$(absolute "$MNIST_IDX")
quick=''
out=''
passed_on=()
for arg in "$@"; do
  case $arg in
    --quick) quick=--quick ;;
    --mnist_idx=*) mnist_idx=$(absolute "${arg#*=}") ;;
    --out=*) out=$(absolute "${arg#*=}") ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) passed_on+=("$arg") ;;
  esac
done

fail() {
  echo "gpu_check: error: $*" >&2
  exit 1
}
cd "$repo"

# What the trainer and the benchmarks import, found without the seconds of importing it.
missing=$("$PYTHON" -c '
import importlib.util
modules = ("tensorflow", "tf_keras", "tensorflow_datasets", "tensorboard", "absl", "numpy", "h5py", "PIL")
print(" ".join(m for m in modules if importlib.util.find_spec(m) is None))' 2>/dev/null) ||
  fail "PYTHON=$PYTHON does not run; point PYTHON at a Python 3.10-3.12 with this project's requirements"
case " $missing " in
  *" tensorflow "*) fail "TensorFlow is not installed for PYTHON=$PYTHON; install tensorflow[and-cuda]==2.21.* and this project's requirements there (pip install -e .), or point PYTHON at a Python that has them" ;;
esac
[[ -z $missing ]] ||
  fail "PYTHON=$PYTHON lacks $missing; install this project's requirements there (pip install -e .)"
if [[ -z $quick ]]; then
  gpus=$(TF_CPP_MIN_LOG_LEVEL=3 "$PYTHON" -c 'import tensorflow as tf
print(len(tf.config.list_physical_devices("GPU")))' 2>/dev/null) ||
    fail "PYTHON=$PYTHON cannot import TensorFlow; $PYTHON -c 'import tensorflow' says why"
  ((gpus > 0)) ||
    fail "TensorFlow sees no GPU (are TensorFlow's CUDA libraries, tensorflow[and-cuda], installed, and does nvidia-smi list one?); --quick runs this check's code on the CPU"
fi
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [[ -f $mnist_idx/$name.gz || -f $mnist_idx/$name ]] ||
    fail "no $mnist_idx/$name.gz: pass --mnist_idx=DIR (or set MNIST_IDX) naming a folder with real MNIST's four IDX files"
done

out=${out:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$out"
logs=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_logs.XXXXXX")
trap 'rm -rf "$logs"' EXIT

started=$SECONDS
status=0
PYTHONUNBUFFERED=1 "$PYTHON" -m benchmarks.run --suite=gpu_check $quick \
  --mnist_idx="$mnist_idx" --dataset="idx:$mnist_idx" --record --records_dir="$out/records" \
  --child_logs="$logs" --output="$out/gpu_check.md" ${passed_on[@]+"${passed_on[@]}"} ||
  status=$?

# One file: the machine that runs this sends back only a few.
for log in "$logs"/*.log; do
  [[ -f $log ]] || continue
  echo "==== $(basename "$log")"
  cat "$log"
done >"$out/child_logs.txt"
if ((status == 0)); then
  echo "gpu_check: $((SECONDS - started)) s in all; tables in $out/gpu_check.md, records in" \
    "$out/records/gpu_check/, child logs in $out/child_logs.txt" >&2
else
  echo "gpu_check: failed after $((SECONDS - started)) s; child logs in $out/child_logs.txt" >&2
fi
exit "$status"
