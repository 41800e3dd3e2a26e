"""Commands printed for the user to paste: they must run as printed, in a fresh shell.

A fresh shell has no ``.venv`` activated, so a bare ``wsss`` or ``mlflow`` is not on its PATH.
:func:`command_line` names the console script that sits beside the running interpreter (the
environment's ``bin/``), as ``.venv/bin/wsss`` when that folder is under the working directory,
else by its absolute path (``python -m`` when the environment has no such script), and quotes
every argument that needs quoting (``shlex``).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

# console scripts and the module each runs as ``python -m`` where the script is missing
MODULES = {"wsss": "wsss.cli", "mlflow": "mlflow"}


def executable(name: str) -> list[str]:
    """The argv prefix that runs console script ``name`` (``wsss``, ``mlflow``) of the running
    environment from a fresh shell in the working directory."""
    script = Path(sys.executable).parent / name
    if not (script.is_file() and os.access(script, os.X_OK)):
        return [_shown_path(Path(sys.executable)), "-m", MODULES.get(name, name)]
    return [_shown_path(script)]


def _shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it (``.venv/bin/wsss``),
    else absolute; never bare (a bare name would be looked up on PATH)."""
    absolute = Path(os.path.abspath(path))
    try:
        relative = absolute.relative_to(Path.cwd())
    except ValueError:
        return str(absolute)
    return str(relative) if len(relative.parts) > 1 else f"./{relative}"  # a "/": not on PATH


def command_line(name: str, *args: object) -> str:
    """``name args...`` as one shell line that runs as printed (see the module doc)."""
    return shlex.join([*executable(name), *(str(a) for a in args)])


def python_line(*args: object) -> str:
    """``python args...`` with the running interpreter (``.venv/bin/python``), quoted."""
    return shlex.join([_shown_path(Path(sys.executable)), *(str(a) for a in args)])
