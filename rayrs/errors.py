"""The one exception type for a user's mistake.

A `UserError` carries a single line that says what is wrong, where (file, field, path) and what to do.
The CLI prints it without a traceback and exits non-zero; every other exception is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """A problem the user can fix: bad sweep file, missing dataset, results folder in the way."""
