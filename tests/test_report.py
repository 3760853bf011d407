"""benchmarks/RESULTS.md and README.md's figures are what the committed records give."""
import re

from benchmarks import report

FIGURE = re.compile(r'\d[\d,]*(?:\.\d+)?(?:%|x| GiB| MiB| s\b| min\b| h\b)')


def test_the_committed_results_page_readme_and_configs_are_rendered_from_the_records():
  for path, text in report.rendered().items():
    with open(path) as f:
      assert f.read() == text, f'{path} is stale: run python -m benchmarks.report'


def test_every_figure_in_the_readme_is_on_the_results_page():
  with open(report.README_FILE) as f:
    readme = re.sub(r'```.*?```', '', f.read(), flags=re.DOTALL)  # commands, not figures
  with open(report.RESULTS_FILE) as f:
    results = f.read()
  figures = set(FIGURE.findall(readme))
  assert figures, 'the README quotes no figures: the pattern is broken'
  assert not {figure for figure in figures if figure not in results}


def test_a_readme_without_the_markers_is_refused():
  try:
    report.with_block('# no markers\n', 'results', 'table')
  except ValueError as e:
    assert 'lacks the markers' in str(e)
  else:
    raise AssertionError('a README without markers was accepted')
