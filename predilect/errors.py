"""The one base of errors a user causes and can fix; standard library only.

Library code raises a subclass (a malformed manifest, an export without its metadata, an
image the service does not screen, a bad option value) with a message that names the file,
line or value and says what to do. The ``predilect`` commands print such an error as one
line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in what the user gave: a file, an option, an input. The message says which."""


class ConfigError(UserError, ValueError):
    """A configuration value out of its range or of the wrong kind."""
