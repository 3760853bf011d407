"""The start-up reference: a bare script that builds the same model and takes one step.

  python -m benchmarks.bare_step '{"image_size": 64, "batch_size": 32}'

No data pipeline, run folder, callbacks or logging: the least any trainer of this model
must do before its first step. run.py times it from process start, like trainer.main.
"""
import json
import sys
import time

import numpy as np

from benchmarks.measure import emit
from trainer.keras_lib import keras
from trainer.model import ModelConfig, build_model


def main(params):
  batch_size = params['batch_size']
  model = build_model(ModelConfig(image_size=params['image_size']), (28, 28, 1), 10)
  model.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss='sparse_categorical_crossentropy',
                metrics=['accuracy'])
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch_size, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, batch_size)
  model.train_on_batch(images, labels)
  return {'first_step_wall': time.time()}


if __name__ == '__main__':
  emit(main(json.loads(sys.argv[1])))
