"""Vertebra label conventions of segmentation masks: VerSe and TotalSegmentator (v2).

A mask is an integer image whose voxel value names the vertebra it belongs to; the value of a
level depends on who made the mask:
  verse:     C1..C7 = 1..7, T1..T12 = 8..19, L1..L6 = 20..25, T13 = 28 (VerSe 2019/2020 readme;
             26/27 are sacrum/coccyx and unlabelled there).
  totalseg:  TotalSegmentator v2 `total` task: vertebrae_S1 = 26, L5 = 27, L4 = 28, ..., L1 = 31,
             T12 = 32, ..., T1 = 43, C7 = 44, ..., C1 = 50. It has no L6 (a sixth lumbar vertebra
             is labelled L5 and the one above shifts) and no T13.
Levels are named as in params.LEVELS ('T1'..'L6'), plus 'C1'..'C7', 'T13', 'S1' where the
convention has them.
"""
from __future__ import annotations

_CERVICAL = [f'C{i}' for i in range(1, 8)]
_THORACIC = [f'T{i}' for i in range(1, 13)]
_LUMBAR = [f'L{i}' for i in range(1, 7)]

VERSE = {**{lev: i + 1 for i, lev in enumerate(_CERVICAL + _THORACIC + _LUMBAR)}, 'T13': 28}
TOTALSEG = {**{lev: 50 - i for i, lev in enumerate(_CERVICAL + _THORACIC + _LUMBAR[:5])},
            'S1': 26}
CONVENTIONS = {'verse': VERSE, 'totalseg': TOTALSEG}


class LabelError(ValueError):
  """An unknown convention, or a level / label value that the convention does not have."""


def label_map(convention: str) -> dict:
  """{level name: label value} of a convention ('verse' or 'totalseg')."""
  try:
    return CONVENTIONS[convention]
  except KeyError:
    raise LabelError(f'unknown label convention {convention!r} '
                     f'(known: {", ".join(CONVENTIONS)})') from None


def level_to_label(level: str, convention: str) -> int:
  """Label value of vertebra `level` (e.g. 'L1') in `convention`; LabelError if it has none."""
  m = label_map(convention)
  if level not in m:
    raise LabelError(f'level {level!r} has no label in the {convention} convention '
                     f'(it has {", ".join(m)})')
  return m[level]


def label_to_level(label: int, convention: str) -> str:
  """Level name of label value `label` in `convention`; LabelError if no level has it."""
  inverse = {v: k for k, v in label_map(convention).items()}
  try:
    return inverse[int(label)]
  except (KeyError, ValueError, TypeError):
    raise LabelError(f'label {label!r} is no vertebra in the {convention} convention') from None
