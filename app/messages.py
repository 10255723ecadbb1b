"""What visitors read: errors written for them, and no absolute path of the server's (the server log keeps those)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from clel.weights import REPO_ROOT


class DemoError(ValueError):
    """A request the demo cannot serve; the message is shown to the user as it is."""


def shown_path(path: str | os.PathLike) -> str:
    """A path as a visitor may see it: relative to the repository when inside it, else only its last part.

    The server's layout (home folder, temporary folders, mount points) is nobody else's business.
    """
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    try:
        return str(p.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return p.name or str(p)


# An absolute path's folders: "/" not preceded by a word character, ":" or "/" (so URLs and relative paths stay).
_ABS_DIRS = re.compile(r"(?<![\w.:/~-])/(?:[^\s/:'\"()<>,;|]+/)+")


def redact_paths(text: str) -> str:
    """``text`` with absolute paths shortened as :func:`shown_path` does (for messages shown on the pages)."""
    text = text.replace(str(REPO_ROOT) + os.sep, "")
    return _ABS_DIRS.sub("", text)
