"""The article's approach, written here only to be measured against the project.

  load the 70,000 images as numpy arrays (keras.datasets' way: gzip and np.frombuffer)
  every image: OpenCV bicubic resize 28x28 -> 64x64, then GRAY2RGB
  np.array(list).astype('float32') / 255: all of them in host memory, as float32
  model.fit(x_train, y_train, validation_split=0.2, batch_size=...)

`fit` on numpy arrays copies them into tensors and gathers shuffled batches from them
(tf_keras's TensorLikeDataAdapter); `first_training_batch` calls `fit` itself and stops
it as its first step begins, so the batch it returns is the first one `fit` trains on. The article also
augmented with ImageDataGenerator, which is slower still; the data stage leaves it out,
which can only flatter the baseline. The whole jobs (memory, time to accuracy) train as
the article did: `article_model` on `augmented_batches`.
"""
import gzip
import os

import numpy as np

try:
  import cv2
except ImportError:  # opencv-python-headless is in the `bench` extra
  cv2 = None

IMAGE_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')
}
SYNTHETIC_SIZES = {'train': 60_000, 'test': 10_000}


def resize_backend():
  """What resizes the baseline's images, for the table."""
  if cv2 is not None:
    return f'OpenCV {cv2.__version__} cv2.resize INTER_CUBIC + cvtColor GRAY2RGB'
  return 'tf.image.resize bicubic on numpy (OpenCV is not installed; pip install .[bench])'


def load_arrays(dataset, fraction=1.0):
  """((x_train, y_train), (x_test, y_test)) as uint8 (N, 28, 28) and uint8 (N,) numpy arrays.

  `dataset` is the project's --dataset string: idx:DIR reads the gzip IDX files the way
  keras.datasets.fashion_mnist.load_data does; synthetic makes random arrays of the same
  shape. `fraction` keeps the first part of each split (the quick smoke run).
  """
  splits = []
  for split, (images_file, labels_file) in IMAGE_FILES.items():
    if dataset == 'synthetic':
      rng = np.random.default_rng(len(split))
      size = round(SYNTHETIC_SIZES[split] * fraction)
      x = rng.integers(0, 256, (size, 28, 28), dtype=np.uint8)
      y = rng.integers(0, 10, size, dtype=np.uint8)
    else:
      directory = dataset[len('idx:'):]
      with gzip.open(os.path.join(directory, labels_file), 'rb') as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
      with gzip.open(os.path.join(directory, images_file), 'rb') as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(len(y), 28, 28)
      size = round(len(y) * fraction)
      x, y = x[:size], y[:size]
    splits.append((x, y))
  return tuple(splits)


def prepare(images, image_size=64):
  """The article's preparation: each image resized bicubic and made RGB, then float32 / 255."""
  if cv2 is not None:
    resized = [
        cv2.cvtColor(cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_CUBIC),
                     cv2.COLOR_GRAY2RGB) for image in images
    ]
  else:
    resized = _tf_resize_rgb(images, image_size)
  return np.array(resized).astype('float32') / 255


def _tf_resize_rgb(images, image_size, chunk=1000):
  """The fallback without OpenCV: the same bicubic resize and gray-to-RGB, in TensorFlow."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = []
  for start in range(0, len(images), chunk):
    x = tf.image.resize(images[start:start + chunk, :, :, None], (image_size, image_size),
                        method='bicubic')
    x = tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)
    out.extend(tf.image.grayscale_to_rgb(x).numpy())
  return out


def first_training_batch(x_train, y_train, batch_size, validation_split=0.2):
  """The first batch `fit(x, y, validation_split=..., batch_size=...)` would train on."""
  from benchmarks.first_batch import first_batch_fit_takes  # pylint: disable=import-outside-toplevel
  return first_batch_fit_takes(x_train,
                               y_train,
                               batch_size=batch_size,
                               validation_split=validation_split,
                               shuffle=True)


# ---- The article's training: its model, augmentation and optimizer.

ROTATION_DEGREES = 10  # ImageDataGenerator(rotation_range=10, zoom_range=0.1), as the article
ZOOM = 0.1
BATCH_SIZE = 128


def hold_out(x, y, validation_split=0.2):
  """(train, validation): the last `validation_split` of the arrays is held out, as the
  project holds out the last part of its train split, so both validate on the same images."""
  cut = len(y) - round(len(y) * validation_split)
  return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def article_model(image_size, num_classes=10):
  """DenseNet121 (random start) with the article's Flatten head, compiled with Adam at Keras's
  defaults: the article does not name its optimizer."""
  from trainer.keras_lib import keras  # pylint: disable=import-outside-toplevel
  backbone = keras.applications.DenseNet121(include_top=False,
                                            weights=None,
                                            input_shape=(image_size, image_size, 3))
  outputs = keras.layers.Dense(num_classes,
                               activation='softmax')(keras.layers.Flatten()(backbone.output))
  model = keras.Model(backbone.input, outputs)
  model.compile(optimizer=keras.optimizers.Adam(),
                loss='sparse_categorical_crossentropy',
                metrics=['accuracy'])
  return model


def augmented_batches(x, y, batch_size=BATCH_SIZE, seed=0):
  """The article's augmentation: ImageDataGenerator's random rotation and zoom."""
  from trainer.keras_lib import keras  # pylint: disable=import-outside-toplevel
  generator = keras.preprocessing.image.ImageDataGenerator(rotation_range=ROTATION_DEGREES,
                                                           zoom_range=ZOOM)
  return generator.flow(x, y, batch_size=batch_size, seed=seed)
