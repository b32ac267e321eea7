"""The one error the `thorax` command shows to its user as a single line, without a traceback."""


class UserError(Exception):
    """Bad input from the person running a command: a wrong argument, a missing file, a bad config.

    The CLI prints ``thorax: error: <message>`` and exits with code 2.
    """
