"""The first batch that tf_keras's `fit` trains on, through public APIs only.

The data-stage rows end where a training step would begin: `fit` has turned its input
into batches and taken the first one. `first_batch_fit_takes` calls the real `fit` with
the caller's data arguments on a model that takes no step: its `train_step` receives
the first batch and ends `fit` there. So whatever `fit` does before a step (arrays to
tensors, the validation split, the shuffle, the first gather; or the dataset's first
batch) is done and timed, and nothing after it.
"""
from trainer.keras_lib import keras


class _FirstBatchTaken(Exception):

  def __init__(self, batch):
    super().__init__('fit took its first batch')
    self.batch = batch


class _TakesNoStep(keras.Model):
  """Hands the batch `fit` gives its first training step back to the caller."""

  def train_step(self, data):
    raise _FirstBatchTaken(data)


def first_batch_fit_takes(*fit_args, **fit_kwargs):
  """The first (x, y) batch of `fit(*fit_args, **fit_kwargs)`, as eager tensors."""
  model = _TakesNoStep()
  # Eager: the step is a Python call, so the batch arrives as tensors, not symbols.
  model.compile(run_eagerly=True)
  try:
    model.fit(*fit_args, epochs=1, verbose=0, **fit_kwargs)
  except _FirstBatchTaken as taken:
    return taken.batch
  raise RuntimeError('fit ended without taking a batch')
