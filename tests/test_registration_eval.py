"""Table 1 analog pieces on hand-made cases: errors per method, table rows, Markdown, figure."""
import numpy as np
import pytest

from osteojax.align import register, registration_eval
from osteojax.align.rigid import Rigid2D


def _pair(shift):
  src = np.array([[10.0, 50.0], [30.0, 50.0], [20.0, 40.0], [8.0, 10.0], [32.0, 10.0]])
  return registration_eval.RegistrationPair(src_kp=src, tgt_kp=src + shift,
                                     src_image=np.random.default_rng(0).random((60, 40)),
                                     tgt_image=np.random.default_rng(1).random((80, 50)))


def test_errors_rows_and_markdown(tmp_path):
  pairs = [_pair([3.0, 4.0]), _pair([6.0, 8.0])]
  methods = {'identity': lambda p: register.identity(),
             'floor': lambda p: register.keypoint_floor(p.src_kp, p.tgt_kp),
             'half': lambda p: Rigid2D(0.0, tuple((p.tgt_kp - p.src_kp)[0] / 2))}
  errors, seconds, transforms = registration_eval.run_methods(pairs, methods, spacing_mm=2.0)
  # identity: 5 px and 10 px at 2 mm = 1 cm and 2 cm at every keypoint
  np.testing.assert_allclose(errors['identity'], [[1.0] * 5, [2.0] * 5])
  np.testing.assert_allclose(errors['floor'], 0.0, atol=1e-9)
  np.testing.assert_allclose(errors['half'], [[0.5] * 5, [1.0] * 5])
  rows = registration_eval.keypoint_table(errors, seconds)
  ident = rows[0]
  assert ident['method'] == 'identity' and ident['pairs'] == 2
  assert ident['HJ']['mean'] == 1.5 and ident['HJ']['n'] == 4 and ident['S1']['n'] == 2
  assert ident['all']['median'] == 1.5 and ident['all']['sd'] == 0.5
  md = registration_eval.table_markdown(rows)
  assert '| identity | 1.50 ± 0.50 | 1.50 ± 0.50 | 1.50 ± 0.50 | 1.50 | 1.50 ± 0.50 |' in md
  registration_eval.overlay_figure(str(tmp_path / 'fig.png'), pairs, transforms)
  assert (tmp_path / 'fig.png').stat().st_size > 1000
  with pytest.raises(ValueError, match=r'\[pairs, 5\]'):
    registration_eval.keypoint_table({'x': np.zeros((2, 3))})
