"""A suite's table: its rows, the record that holds it, and the markdown made from that record.

benchmarks/run.py prints each table from the very record it writes (benchmarks/records.py),
so what a run prints and what `python -m benchmarks.report` renders from
benchmarks/records/ are the same table. A suite's record:

  command   the command that measured it, to rerun it
  suite     run.py's --suite; kind: 'full' or 'quick' (quick figures are not to be quoted)
  title     the table's heading
  header    the lines under the heading: date and kind, machine and versions, data
  columns   the column names, in order
  rows      one dict per row, plain values: measure, project and reference (the text the
            table shows), ratio (a number or null) and ratio_text, target, met (true,
            false or null), project_value and reference_value (the numbers behind the
            text, where there are any)
  notes     one paragraph per note: how the rows were measured
  elapsed_s seconds each measurement took, by what the progress line called it

and whatever else the suite keeps (data, sizes, versions, the raw results). Imports no
TensorFlow.
"""
import dataclasses
from typing import List, Optional

COLUMNS = ('Measure', 'Project', 'Baseline / reference', 'Ratio', 'Target', 'Met')


@dataclasses.dataclass
class Row:
  measure: str
  project: str
  reference: str
  ratio: Optional[float] = None
  ratio_text: str = ''
  target: str = ''
  met: Optional[bool] = None
  project_value: Optional[float] = None
  reference_value: Optional[float] = None


def suite_record(command: str, suite: str, kind: str, title: str, header: List[str],
                 rows: List[Row], notes: List[str], **details) -> dict:
  """The record of one table; `details` are kept beside it (sizes, versions, raw results)."""
  return {
      'command': command,
      'suite': suite,
      'kind': kind,
      'title': title,
      'header': list(header),
      'columns': list(COLUMNS),
      'rows': [dataclasses.asdict(row) for row in rows],
      'notes': list(notes),
      **details
  }


def markdown(record: dict) -> str:
  """The table of a suite's record, as benchmarks/RESULTS.md shows it."""
  lines = [f'## {record["title"]}', '']
  lines += [f'- {line}' for line in record['header']]
  lines += [
      '', '| ' + ' | '.join(record['columns']) + ' |', '| --- | ---: | ---: | ---: | --- | --- |'
  ]
  for row in record['rows']:
    met = '' if row['met'] is None else ('yes' if row['met'] else '**no**')
    lines.append(f'| {row["measure"]} | {row["project"]} | {row["reference"]} | '
                 f'{row["ratio_text"]} | {row["target"]} | {met} |')
  lines += [''] + [f'- {note}' for note in record['notes']]
  return '\n'.join(lines) + '\n'
