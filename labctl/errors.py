"""The one base class of errors that labctl reports to the user as a clear line, without a traceback."""


class LabctlError(Exception):
    """A failure the user can act on: the message says what happened and what to do."""
