"""The two kinds of bad input that stop a run with one line instead of a traceback.

`ConfigError`: a config value that is not one of the known choices or does not fit the data
(an unknown task, cohort, select rule, a batch larger than the split ...). It is a ValueError,
so callers that catch ValueError keep working. File problems are
`osteojax.data.io.OsteoDataError` ('<path>: <problem>'). `python -m osteojax.main` prints
either as `error: ...` and exits with status 2.
"""


class ConfigError(ValueError):
  """A bad config value: str() is one line naming the value and the known choices."""

  def __init__(self, message):
    super().__init__(' '.join(str(message).split()))
