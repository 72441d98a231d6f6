"""The one exception type for mistakes a user can fix (bad paths, files, values).

The CLI prints such an error as a single line and exits non-zero without a traceback;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    pass
