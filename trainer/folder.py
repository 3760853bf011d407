"""A folder of images in class subfolders: its files, classes and splits, checked before training.

The layout Keras's image_dataset_from_directory, torchvision's ImageFolder and tfds's
ImageFolder read:

  DIR/train/CLASS/...   with, if the data has them, DIR/validation/CLASS/... and DIR/test/CLASS/...
  DIR/CLASS/...         one pool: the test split is carved out of it (--test_fraction)

Images are found by extension (.jpg .jpeg .png .bmp .gif .webp, in any case) anywhere under a
class folder; other files, and hidden files and folders, are ignored. The class names are
the folder names, sorted; a label is the index of its class.

A split the folder lacks is carved from each class of the training files: the files of a
class are ordered by a hash of their path inside the class folder, the first
--test_fraction of them are the test split, the next --validation_split of the rest the
validation split. So the carve needs no seed, does not depend on how files are named or
listed, and every class gives its share.

`read_folder` decodes every file once, with the decoder training uses (trainer/images.py),
so an unreadable file stops the command before training with one line that names it,
never as a traceback mid-epoch; --skip_unreadable trains without those files instead.
"""
import collections
import dataclasses
import hashlib
import os
from typing import Dict, List, Sequence, Tuple

import tensorflow as tf
from absl import logging

from trainer import images
from trainer.errors import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')
SPLITS = ('train', 'validation', 'test')
NAMED_IN_ERRORS = 3  # unreadable files a message names; it counts them all


@dataclasses.dataclass(frozen=True)
class Split:
  paths: Tuple[str, ...]
  labels: Tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Folder:
  """A checked folder: every path in its splits decodes."""
  directory: str
  class_names: Tuple[str, ...]
  splits: Dict[str, Split]  # train, validation and test
  channels: int  # of the stored images: 1 or 3


def read_folder(directory: str, validation_split: float, test_fraction: float, channels: str,
                skip_unreadable: bool) -> Folder:
  """Lists, carves and scans `directory`; `channels` is 'auto', '1' or '3'."""
  class_names, splits = list_splits(directory, validation_split, test_fraction)
  counts, unreadable = scan([path for split in splits.values() for path in split.paths])
  if unreadable:
    _report_unreadable(directory, unreadable, sum(len(s.paths) for s in splits.values()),
                       skip_unreadable)
    splits = {name: _without(split, set(unreadable)) for name, split in splits.items()}
    if not all(splits[name].paths for name in SPLITS):
      raise UserError(f'{directory}: no readable images are left in a split; replace the '
                      'unreadable files')
  return Folder(directory, class_names, splits,
                int(channels) if channels != 'auto' else majority_channels(counts))


def list_splits(directory: str, validation_split: float,
                test_fraction: float) -> Tuple[Tuple[str, ...], Dict[str, Split]]:
  """The class names and the train, validation and test files, carved where missing."""
  if not tf.io.gfile.isdir(directory):
    raise UserError(f'--dataset=folder:{directory}: no such folder; give a folder of class '
                    'subfolders of images (DIR/CLASS/*.jpg, or DIR/train/CLASS/*.jpg)')
  subfolders = _subfolders(directory)
  if 'train' in subfolders:
    unknown = sorted(set(subfolders) - set(SPLITS))
    if unknown:
      raise UserError(f'{directory} has a train/ folder, so its subfolders are splits, but '
                      f'{", ".join(unknown)} is not train, validation or test; rename or move it')
    roots = {split: os.path.join(directory, split) for split in subfolders}
  else:
    roots = {'train': directory}
  given = {split: _class_files(root) for split, root in roots.items()}
  class_names = tuple(sorted(given['train']))
  if not class_names:
    raise UserError(f'{roots["train"]} has no class subfolders; put the images of each class in '
                    'a subfolder named after it (DIR/CLASS/*.jpg)')
  for split, classes in given.items():
    for name, paths in sorted(classes.items()):
      if name not in given['train']:
        raise UserError(f'{os.path.join(roots[split], name)} is a class that {roots["train"]} '
                        'does not have; add its training images or remove it')
      if not paths:
        raise UserError(f'the class folder {os.path.join(roots[split], name)} holds no images '
                        f'({" ".join(IMAGE_EXTENSIONS)}); add some or remove it')
  carved = _carve(given['train'], roots['train'], 0.0 if 'test' in given else test_fraction,
                  0.0 if 'validation' in given else validation_split)
  lists = {
      split: given[split] if split in given and split != 'train' else carved[split]
      for split in SPLITS
  }
  splits = {split: _as_split(lists[split], class_names) for split in SPLITS}
  for split in SPLITS:
    if not splits[split].paths:
      raise UserError(f'{directory}: the {split} split is empty (too few images to carve one '
                      'from); add images, or raise --test_fraction or --validation_split')
  return class_names, splits


def _subfolders(directory):
  """Its folders but hidden ones (.ipynb_checkpoints, .git): no class or split is hidden."""
  return sorted(
      name.rstrip('/')
      for name in tf.io.gfile.listdir(directory)
      if not name.startswith('.') and tf.io.gfile.isdir(os.path.join(directory, name)))


def _class_files(directory: str) -> Dict[str, List[str]]:
  """{class folder name: the image paths under it, sorted}."""
  classes = {}
  for name in _subfolders(directory):
    root = os.path.join(directory, name)
    classes[name] = sorted(
        os.path.join(folder, file)
        for folder, _, files in tf.io.gfile.walk(root)
        for file in files
        if file.lower().endswith(IMAGE_EXTENSIONS) and not file.startswith('.'))
  return classes


def _carve(classes: Dict[str, List[str]], root: str, test_fraction: float,
           validation_split: float) -> Dict[str, Dict[str, List[str]]]:
  """{split: {class: paths}}: per class, test first and validation next in hash order."""
  carved: Dict[str, Dict[str, List[str]]] = {split: {} for split in SPLITS}
  for name, paths in classes.items():
    # The path inside the class folder: the carve survives moving or renaming DIR.
    inside = len(os.path.join(root, name)) + 1
    ordered = sorted(paths, key=lambda path: _stable_hash(path[inside:]))
    num_test = round(len(ordered) * test_fraction)
    num_validation = round((len(ordered) - num_test) * validation_split)
    carved['test'][name] = sorted(ordered[:num_test])
    carved['validation'][name] = sorted(ordered[num_test:num_test + num_validation])
    carved['train'][name] = sorted(ordered[num_test + num_validation:])
  return carved


def _stable_hash(text: str) -> str:
  # Python's hash() of a string changes from process to process.
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


def _as_split(classes: Dict[str, List[str]], class_names: Sequence[str]) -> Split:
  pairs = [(path, class_names.index(name)) for name in sorted(classes) for path in classes[name]]
  return Split(tuple(path for path, _ in pairs), tuple(label for _, label in pairs))


def scan(paths: Sequence[str]) -> Tuple[collections.Counter, List[str]]:
  """Decodes every file in parallel; returns how many are gray (1) and colour (3), and the
  paths that do not decode (in the order given)."""
  indexed = tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string)).enumerate()
  decoded = indexed.map(lambda i, path: (i, images.channel_count(tf.io.read_file(path))),
                        num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=False).ignore_errors()
  readable: Dict[int, int] = {}
  for batch_indices, batch_channels in decoded.batch(4096).as_numpy_iterator():
    readable.update(zip(batch_indices.tolist(), batch_channels.tolist()))
  unreadable = [path for i, path in enumerate(paths) if i not in readable]
  return collections.Counter(readable.values()), unreadable


def majority_channels(counts: collections.Counter) -> int:
  """1 if most images are gray, else 3 (a tie keeps the colour)."""
  return 1 if counts[1] > counts[3] else 3


def _report_unreadable(directory, unreadable, total, skip):
  named = ', '.join(unreadable[:NAMED_IN_ERRORS])
  more = f' and {len(unreadable) - NAMED_IN_ERRORS} more' if len(
      unreadable) > NAMED_IN_ERRORS else ''
  problem = (f'{len(unreadable)} of the {total} image files in {directory} are not readable '
             f'images: {named}{more}')
  if not skip:
    raise UserError(f'{problem}; replace or delete them, or pass --skip_unreadable to train '
                    'without them')
  logging.warning('%s; training without them (--skip_unreadable)', problem)


def _without(split: Split, dropped: set) -> Split:
  kept = [(path, label) for path, label in zip(split.paths, split.labels) if path not in dropped]
  return Split(tuple(path for path, _ in kept), tuple(label for _, label in kept))
