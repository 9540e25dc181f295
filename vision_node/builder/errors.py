"""The build step's one exception type, importable without torch (keeps --help fast)."""


class BuildError(Exception):
    """A build step failed for a reason the operator can act on; the message says which and why."""
