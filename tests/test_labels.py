"""Vertebra label conventions: the published numbers, round trips and clear errors."""
import pytest

from osteojax.data import labels
from osteojax.data import params as P


def test_published_values():
  ts = labels.CONVENTIONS['totalseg']
  assert [ts[f'L{i}'] for i in range(5, 0, -1)] == [27, 28, 29, 30, 31]
  assert [ts[f'T{i}'] for i in range(12, 0, -1)] == list(range(32, 44))
  assert 'L6' not in ts
  vs = labels.CONVENTIONS['verse']
  assert [vs[f'C{i}'] for i in range(1, 8)] == list(range(1, 8))
  assert [vs[f'T{i}'] for i in range(1, 13)] == list(range(8, 20))
  assert [vs[f'L{i}'] for i in range(1, 7)] == list(range(20, 26))


@pytest.mark.parametrize('convention', ['verse', 'totalseg'])
def test_round_trip(convention):
  m = labels.label_map(convention)
  assert len(set(m.values())) == len(m)
  for level in P.LEVELS:
    if level == 'L6' and convention == 'totalseg':
      continue
    value = labels.level_to_label(level, convention)
    assert labels.label_to_level(value, convention) == level


def test_errors():
  with pytest.raises(labels.LabelError, match="unknown label convention 'nnunet'"):
    labels.level_to_label('L1', 'nnunet')
  with pytest.raises(labels.LabelError, match="level 'L6' has no label in the totalseg"):
    labels.level_to_label('L6', 'totalseg')
  with pytest.raises(labels.LabelError, match="level 'X9' has no label in the verse"):
    labels.level_to_label('X9', 'verse')
  with pytest.raises(labels.LabelError, match='label 99 is no vertebra in the verse'):
    labels.label_to_level(99, 'verse')
