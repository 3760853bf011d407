#!/usr/bin/env bash
# The article's two configurations, trained to the end from ImageNet weights at 64x64, each
# recorded in benchmarks/records/mnist_imagenet/ for benchmarks/RESULTS.md (the article:
# 99.44% and 99.35% after about 30 epochs).
#
#   bash benchmarks/accuracy.sh [trainer flags for both runs, e.g. --num_gpus=1 --seed=1]
#
# Needs a network the first time (MNIST and the ImageNet weights download once) and, in
# practice, a GPU: each run is 10 epochs of DenseNet121 at 64x64 on 48,000 images. Each run
# goes to runs/mnist_<adapter>_imagenet: rerun this script to resume an interrupted run; a
# finished one is only recorded again. Then: python -m benchmarks.report
set -euo pipefail
cd "$(dirname "$0")/.."

for adapter in rgb conv; do
  python -m benchmarks.accuracy --claim=mnist_imagenet --name="${adapter}64" \
      --run_dir="runs/mnist_${adapter}_imagenet" -- --flagfile="configs/mnist_${adapter}.cfg" "$@"
done
