"""BatchNorm recalibration on finished runs: each run's best checkpoint on its validation
split as saved, then after trainer.callbacks.RecalibrateBatchNorm over N un-augmented
training batches, from the same weights each time (benchmarks/RESULTS.md, fourth round).

  python -m benchmarks.recalibration --batches=50,200 runs/mnist_rgb runs/mnist_conv

A run trained with --recalibrate_batchnorm (the default) already holds recalibrated statistics.
"""
from typing import List, Sequence

from absl import flags

from trainer import callbacks, cli, data, evaluate, runs
from trainer.errors import UserError

flags.DEFINE_list('batches', ['50', '200'], 'Training batches to recalibrate over, a column each.')
flags.register_validator('batches',
                         lambda values: all(v.isdigit() and int(v) > 0 for v in values),
                         message='--batches takes positive whole numbers, e.g. 50,200')

FLAGS = flags.FLAGS


def validation_accuracies(run_dir: str, batch_counts: Sequence[int]) -> List[float]:
  """As saved, then recalibrated over each of `batch_counts` training batches."""
  config = runs.load_config(run_dir)
  model = runs.load_best_model(run_dir)
  splits = data.splits_for(config)
  validation = splits.evaluation_batches('validation', config.batch_size)

  def accuracy():
    return evaluate.evaluate(model, validation, splits.info.num_classes).accuracy

  accuracies = [accuracy()]
  for count in batch_counts:
    runs.restore(model, runs.path(run_dir, runs.BEST_CHECKPOINT))
    recalibration = callbacks.RecalibrateBatchNorm(
        splits.training_batches(config.batch_size, seed=config.seed), count)
    recalibration.set_model(model)
    recalibration.on_test_begin()
    accuracies.append(accuracy())
  return accuracies


def main(run_dirs: List[str]) -> None:
  if not run_dirs:
    raise UserError('name the finished run folders to evaluate, e.g. runs/mnist_rgb')
  counts = [int(count) for count in FLAGS.batches]
  print('| Run | Validation accuracy as saved | ' +
        ' | '.join(f'Recalibrated over {count} batches' for count in counts) + ' |')
  print('| --- |' + ' ---: |' * (1 + len(counts)))
  for run_dir in run_dirs:
    accuracies = validation_accuracies(run_dir, counts)
    print(f'| {run_dir} | ' + ' | '.join(f'{a:.4f}' for a in accuracies) + ' |', flush=True)


if __name__ == '__main__':
  cli.run(main, takes_arguments=True)
