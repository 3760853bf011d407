"""--dataset=folder:DIR: class folders of images of any size, format and mode, checked before
training, trained on and evaluated with the folder names as the classes."""
import collections
import dataclasses
import json
import os
import shutil

import pytest
import tensorflow as tf

from helpers import (
    TINY_FLAGS,
    error_line,
    run_offline,
    train_with_flags,
    write_file,
    write_image_folder,
)
from trainer import data, evaluate, folder, runs, train
from trainer.config import SourceConfig, TrainConfig
from trainer.errors import UserError
from trainer.keras_lib import keras
from trainer.model import BACKBONE, BACKBONE_INPUT

GRAY_KINDS = [('png', 'L'), ('png', 'LA'), ('png', 'I;16'), ('jpg', 'RGB')]  # 3 gray of 4


def load(directory, **source):
  return data.load_splits(f'folder:{directory}',
                          None,
                          validation_split=0.2,
                          image_size=32,
                          source=SourceConfig(**source))


def labels_and_shapes(ds):
  labels, shapes = [], set()
  for image, label in ds.as_numpy_iterator():
    labels.append(int(label))
    shapes.add((image.shape, str(image.dtype)))
  return collections.Counter(labels), shapes


def test_mixed_sizes_formats_and_modes_become_one_stored_shape_in_three_splits(tmp_path):
  write_image_folder(tmp_path / 'pets', per_class=10)
  splits = load(tmp_path / 'pets')
  assert splits.info.image_shape == (32, 32, 3)  # most of the files are colour
  assert splits.info.class_names == ('cat', 'dog', 'eel') and splits.info.num_classes == 3
  # Each class gives its share: 1 of 10 to test, 2 of the other 9 to validation.
  for split, per_class in [('train', 7), ('validation', 2), ('test', 1)]:
    counts, shapes = labels_and_shapes(getattr(splits, split))
    assert counts == {0: per_class, 1: per_class, 2: per_class}, split
    assert shapes == {((32, 32, 3), 'uint8')}
  images, labels = next(iter(splits.training_batches(8, seed=0)))
  assert images.shape == (8, 32, 32, 3) and images.dtype == tf.uint8
  assert labels.dtype == tf.int64


def test_hidden_folders_and_other_files_are_not_classes_or_images(tmp_path):
  write_image_folder(tmp_path / 'pets', ('cat', 'dog'), per_class=10)
  write_image_folder(tmp_path / 'pets' / '.ipynb_checkpoints', ('cat',), per_class=2)
  write_file(tmp_path / 'pets' / 'cat' / 'notes.txt', b'not an image')
  write_file(tmp_path / 'pets' / 'cat' / '.hidden.png', b'')
  class_names, splits = folder.list_splits(str(tmp_path / 'pets'), 0.2, 0.1)
  assert class_names == ('cat', 'dog')
  assert sum(len(split.paths) for split in splits.values()) == 20


def test_channels_follow_most_of_the_images_unless_given(tmp_path):
  write_image_folder(tmp_path / 'digits', per_class=8, kinds=GRAY_KINDS)
  assert load(tmp_path / 'digits').info.image_shape == (32, 32, 1)
  rgb = load(tmp_path / 'digits', channels='3')
  assert rgb.info.image_shape == (32, 32, 3)
  image, _ = next(iter(rgb.train))
  assert image.shape == (32, 32, 3)


def test_a_folder_with_its_own_splits_keeps_them_and_carves_only_what_it_lacks(tmp_path):
  root = tmp_path / 'flowers'
  train_paths = write_image_folder(root / 'train', ('rose', 'tulip'), per_class=10)
  test_paths = write_image_folder(root / 'test', ('rose', 'tulip'), per_class=3, seed=1)
  class_names, splits = folder.list_splits(str(root), validation_split=0.2, test_fraction=0.1)
  assert class_names == ('rose', 'tulip')
  assert sorted(splits['test'].paths) == test_paths
  assert len(splits['validation'].paths) == 4  # 2 of each class's 10
  assert sorted(splits['train'].paths + splits['validation'].paths) == train_paths
  write_image_folder(root / 'validation', ('rose',), per_class=2, seed=2)
  _, splits = folder.list_splits(str(root), validation_split=0.2, test_fraction=0.1)
  assert sorted(splits['train'].paths) == train_paths and len(splits['validation'].paths) == 2


def test_the_carve_depends_on_the_files_not_on_where_the_folder_is(tmp_path):
  write_image_folder(tmp_path / 'a', per_class=20)
  shutil.copytree(tmp_path / 'a', tmp_path / 'elsewhere' / 'b')
  inside = lambda split, root: sorted(os.path.relpath(p, root) for p in split.paths)
  _, first = folder.list_splits(str(tmp_path / 'a'), 0.2, 0.1)
  _, second = folder.list_splits(str(tmp_path / 'elsewhere' / 'b'), 0.2, 0.1)
  for split in folder.SPLITS:
    assert inside(first[split], tmp_path / 'a') == inside(second[split],
                                                          tmp_path / 'elsewhere' / 'b')
  # Not the last files by name: the carve takes its share from across each class.
  test_names = [os.path.splitext(os.path.basename(p))[0] for p in first['test'].paths]
  assert len(test_names) == 6 and test_names != ['018', '019'] * 3


@pytest.mark.parametrize('make, expected', [
    (lambda root: None, 'no such folder'),
    (lambda root: write_file(root / 'loose.png', b''), 'has no class subfolders'),
    (lambda root: (write_image_folder(root / 'train',
                                      ('a',), 3), write_image_folder(root / 'val', ('a',), 3)),
     r'val is not train, validation or test'),
    (lambda root: (write_image_folder(root / 'train',
                                      ('a',), 3), write_image_folder(root / 'test', ('b',), 3)),
     r'test/b is a class that .*train does not have'),
    (lambda root: (write_image_folder(root, ('a',), 3), os.makedirs(root / 'b')),
     r'class folder .*/b holds no images'),
    (lambda root: write_image_folder(root, ('a', 'b'), 1), 'the validation split is empty'),
])
def test_a_folder_that_is_not_laid_out_as_classes_is_refused_in_one_line(tmp_path, make, expected):
  root = tmp_path / 'data'
  make(root)
  with pytest.raises(UserError, match=expected):
    folder.list_splits(str(root), 0.2, 0.1)


def corrupt_folder(root):
  """A good folder plus three files that are not readable images."""
  write_image_folder(root, ('a', 'b'), per_class=10)
  good_png = open(os.path.join(root, 'a', '000.png'), 'rb').read()
  return [
      write_file(root / 'a' / 'empty.jpg', b''),
      write_file(root / 'b' / 'text.png', b'this is not a png'),
      write_file(root / 'b' / 'truncated.png', good_png[:60]),
  ]


def test_unreadable_files_are_found_before_training_and_named_with_their_count(tmp_path):
  bad = corrupt_folder(tmp_path / 'data')
  with pytest.raises(UserError) as refused:
    load(tmp_path / 'data')
  message = str(refused.value)
  assert message.startswith(f'3 of the 23 image files in {tmp_path / "data"} are not readable')
  assert all(path in message for path in bad) and '--skip_unreadable' in message
  splits = load(tmp_path / 'data', skip_unreadable=True)
  kept = sum(data.num_examples(getattr(splits, split)) for split in data.SPLITS)
  assert kept == 20


def test_the_scan_is_the_decode_training_uses(tmp_path):
  paths = write_image_folder(tmp_path / 'data', ('a',), per_class=10)
  counts, unreadable = folder.scan([*paths, write_file(tmp_path / 'x.png', b'\x89PNG\r\n')])
  assert unreadable == [str(tmp_path / 'x.png')]
  assert counts == {1: 3, 3: 7}  # gray: L, LA, I;16


@pytest.mark.slow
def test_a_command_given_unreadable_files_ends_in_one_line_naming_them(tmp_path):
  bad = corrupt_folder(tmp_path / 'data')
  result, _ = run_offline('trainer.main', f'--dataset=folder:{tmp_path / "data"}', '--weights=none',
                          f'--run_dir={tmp_path / "run"}')
  line = error_line(result)
  assert '3 of the 23 image files' in line and bad[0] in line and '--skip_unreadable' in line
  assert not os.path.exists(tmp_path / 'run' / runs.CONFIG_FILE)


def test_the_memory_budget_may_change_on_resume_but_not_how_images_are_stored(tmp_path):
  config = TrainConfig(run_dir=str(tmp_path), dataset=f'folder:{tmp_path}')
  runs.record_config(config.run_dir, config, flags_text='')
  runs.check_resumable(dataclasses.replace(config, memory_budget_mb=5))  # no error
  with pytest.raises(UserError, match=r'other settings \(channels\)'):
    runs.check_resumable(dataclasses.replace(config, source=SourceConfig(channels='1')))
  # A run recorded before these settings existed loads with their defaults.
  recorded = json.loads((tmp_path / runs.CONFIG_FILE).read_text())
  del recorded['source'], recorded['memory_budget_mb']
  (tmp_path / runs.CONFIG_FILE).write_text(json.dumps(recorded))
  assert runs.load_config(str(tmp_path)) == config


# ---- Through training: the folder names are the classes of the run and its report.


def stand_in_model(config, input_shape, num_classes):
  """A small model laid out like build_model's (the data, not DenseNet, is under test here)."""
  images = keras.Input(input_shape, dtype='uint8', name='images')
  x = keras.layers.Rescaling(1 / 255, name=BACKBONE_INPUT)(images)
  backbone = keras.Sequential(
      [keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D()], name=BACKBONE)
  logits = keras.layers.Dense(num_classes, name='logits')(backbone(x))
  return keras.Model(images, keras.layers.Activation('softmax')(logits))


def test_a_run_on_a_folder_reports_and_records_the_folder_names(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(train, 'build_model', stand_in_model)
  monkeypatch.setattr(runs, 'build_model', stand_in_model)
  write_image_folder(tmp_path / 'pets', ('cat', 'dog', 'eel'), per_class=10)
  run_dir = str(tmp_path / 'run')
  # Streamed: over a budget of 10 KiB.
  metrics = train_with_flags(*TINY_FLAGS, f'--dataset=folder:{tmp_path / "pets"}',
                             '--memory_budget_mb=0.01', '--weights=none', '--noexport',
                             '--recalibrate_batchnorm=0', f'--run_dir={run_dir}')
  assert 0 <= metrics['test_accuracy'] <= 1
  with open(os.path.join(run_dir, runs.DATASET_FILE)) as f:
    assert json.load(f) == {
        'image_shape': [32, 32, 3],
        'num_classes': 3,
        'class_names': ['cat', 'dog', 'eel'],
        'aspect': 'crop'  # how the files were fitted: the served model fits them alike
    }
  capsys.readouterr()
  evaluation = evaluate.evaluate_run(run_dir)
  report = capsys.readouterr().out
  assert evaluation.num_examples == 3
  for index, name in enumerate(('cat', 'dog', 'eel')):
    assert f'{index} {name}' in report
