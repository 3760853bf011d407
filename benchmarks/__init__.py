"""Benchmarks: the project against the article's approach, side by side in one run.

  python -m benchmarks.run --suite=cpu            # the CPU table, then the whole jobs' table
  python -m benchmarks.run --suite=cpu --quick    # a smoke check of the same code, small sizes
  python -m benchmarks.run --suite=jobs --mnist_idx=DIR  # whole jobs: memory, time to accuracy
  python -m benchmarks.run --suite=cpu_settings   # img/s here by precision, threads, batch, oneDNN
  python -m benchmarks.run --suite=gpu            # img/s per GPU: precision, GPUs, XLA, steps/call
  bash benchmarks/gpu_check.sh --mnist_idx=DIR    # the first GPU machine: the gpu suite, where the
                                                  # model runs, 2 epochs of MNIST, in 8 minutes
  python -m benchmarks.recipe_vs_script           # the recipe against a plain script, equal budget
  python -m benchmarks.recalibration RUN_DIR...   # BatchNorm recalibration on finished runs
  python -m benchmarks.own_images --work_dir=DIR   # folders of real digits against IDX; streaming
  bash benchmarks/accuracy.sh                     # the article's two configurations from ImageNet, recorded

run.py        the command line and the suites; a full run records each table (imports no
              TensorFlow)
tables.py     a table's rows, the record that holds them, the markdown made from that record
cases.py      the measurements, each run in a child process of its own
first_batch.py  the first batch tf_keras's fit trains on, through fit itself (public APIs)
gpu_check.sh  run.py's gpu_check suite with its checks and budget, for a borrowed GPU machine
baseline.py   the article's approach: OpenCV resize to 64x64 RGB float32 in host memory, then
              `fit` on the arrays; its model (Flatten head, Adam) and ImageDataGenerator
recipe_vs_script.py  trainer.main's recipe against a plain tf_keras script on real digits
recalibration.py  finished runs' validation accuracy before and after BatchNorm recalibration
own_images.py  MNIST and Fashion-MNIST as folders of image files against their IDX files;
              training speed and host memory streamed against in memory
bare_step.py  a bare script that builds the same model and takes one step (start-up reference)
measure.py    child processes and their runner (time budget, elapsed times), peak memory, step
              timers' arithmetic, the machine's description
accuracy.py   trains a run of trainer.main to its end and records it; accuracy.sh runs it on
              configs/mnist_rgb.cfg and configs/mnist_conv.cfg
records.py    the records (benchmarks/records/CLAIM/NAME.json) every published figure comes from
"""
