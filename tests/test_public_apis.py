"""The project uses Keras's public API only: nothing imports a `keras.src` or `tf_keras.src`
module, whose names change between releases without notice (and Keras 3 moved them all)."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('trainer', 'benchmarks', 'tests')


def python_files():
  for package in PACKAGES:
    for folder, _, names in os.walk(os.path.join(REPO, package)):
      yield from (os.path.join(folder, name) for name in names if name.endswith('.py'))


def private_keras_imports(path):
  """Each import of a Keras `src` module in the file, as 'line: module'; also a module name
  handed to importlib or __import__ as a string."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      modules = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      modules = [node.module or ''] + [f'{node.module}.{alias.name}' for alias in node.names]
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
      modules = [node.value]
    else:
      continue
    found += [f'{node.lineno}: {m}' for m in modules if _is_private_keras(m)]
  return found


def _is_private_keras(module):
  parts = module.split('.')
  return len(parts) > 1 and parts[0] in ('keras', 'tf_keras') and parts[1] == 'src'


# Joined here, so that this file holds no such name itself.
@pytest.mark.parametrize('parts', [('tf_keras', 'src', 'engine', 'data_adapter'),
                                   ('keras', 'src', 'layers'), ('tf_keras', 'src')])
def test_the_check_sees_private_keras_modules(parts):
  assert _is_private_keras('.'.join(parts))
  assert not _is_private_keras('tf_keras.layers') and not _is_private_keras('src.keras')


def test_no_file_imports_a_private_keras_module():
  offenders = {path: found for path in python_files() if (found := private_keras_imports(path))}
  assert not offenders, offenders
