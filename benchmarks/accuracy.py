"""The accuracy table of benchmarks/accuracy.sh, from finished run folders.

  python -m benchmarks.accuracy rgb=runs/mnist_rgb conv=runs/mnist_conv

Reads each run's metrics.json (test loss and accuracy of the best checkpoint), history.csv
(epochs run, and the epoch whose checkpoint was kept) and config.json (the settings).
"""
import csv
import json
import os
import sys

# The article's results (test accuracy, test loss), each after about 30 epochs.
ARTICLE = {'rgb': (0.9944, 0.01562), 'conv': (0.9935, 0.01901)}
ARTICLE_EPOCHS = 30
TARGET_ACCURACY = 0.997
TARGET_EPOCHS = 10


def summarize(run_dir):
  with open(os.path.join(run_dir, 'metrics.json')) as f:
    metrics = json.load(f)
  with open(os.path.join(run_dir, 'config.json')) as f:
    config = json.load(f)
  with open(os.path.join(run_dir, 'history.csv')) as f:
    history = [row for row in csv.DictReader(f) if row.get('val_accuracy')]
  # history.csv is appended across resumes: the last row of each epoch counts.
  by_epoch = {int(row['epoch']): float(row['val_accuracy']) for row in history}
  best_epoch = max(by_epoch, key=by_epoch.get) + 1 if by_epoch else None
  return {
      'accuracy': metrics['test_accuracy'],
      'loss': metrics['test_loss'],
      'epochs': config['epochs'],
      'best_epoch': best_epoch,
      'dataset': config['dataset'],
      'image_size': config['model']['image_size'],
      'weights': config['weights']
  }


def table(runs):
  lines = [
      '| Adapter | Test accuracy | Test loss | Epochs run | Best epoch | Article '
      f'(about {ARTICLE_EPOCHS} epochs) | Target | Met |',
      '| --- | ---: | ---: | ---: | ---: | --- | --- | --- |'
  ]
  for adapter, run_dir in runs:
    s = summarize(run_dir)
    article_accuracy, article_loss = ARTICLE.get(adapter, (None, None))
    article = (f'{article_accuracy:.2%}, loss {article_loss:.5f}' if article_accuracy else '')
    met = s['accuracy'] >= TARGET_ACCURACY and s['epochs'] <= TARGET_EPOCHS
    lines.append(f'| {adapter} ({run_dir}) | {s["accuracy"]:.2%} | {s["loss"]:.5f} | '
                 f'{s["epochs"]} | {s["best_epoch"]} | {article} | >= {TARGET_ACCURACY:.1%} in '
                 f'<= {TARGET_EPOCHS} epochs | {"yes" if met else "**no**"} |')
  first = summarize(runs[0][1])
  lines.append('')
  lines.append(f'- {first["dataset"]}, {first["image_size"]}x{first["image_size"]}, weights '
               f'{first["weights"]}; test figures are the best validation checkpoint\'s.')
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) < 2 or not all('=' in arg for arg in argv[1:]):
    sys.exit('usage: python -m benchmarks.accuracy ADAPTER=RUN_DIR [ADAPTER=RUN_DIR ...]')
  runs = [tuple(arg.split('=', 1)) for arg in argv[1:]]
  missing = [d for _, d in runs if not os.path.exists(os.path.join(d, 'metrics.json'))]
  if missing:
    sys.exit(f'error: {", ".join(missing)} has no metrics.json; the run has not finished')
  print(table(runs), end='')


if __name__ == '__main__':
  main(sys.argv)
