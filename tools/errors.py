"""The one error type the ``gridedge`` command reports: a message for the user, no traceback.

Each tool raises its own subclass (FlashError, ProvisionError, …) with a one-line message
and the library error chained as its cause; tools/cli.py prints it once, prefixed with
the subcommand, and exits non-zero.
"""

from __future__ import annotations


class ToolError(Exception):
    """A tool could not do its job; ``str()`` is the message for the user."""
