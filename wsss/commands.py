"""Commands printed for the user to paste: they must run as printed, in a fresh shell.

A fresh shell has no ``.venv`` activated, so a bare ``wsss`` or ``mlflow`` is not on its PATH,
and it may start in any folder, so a path relative to where the command was printed would not
be found either. :func:`command_line` names the console script that sits beside the running
interpreter (the environment's ``bin/``) by its absolute path (``python -m`` when the
environment has no such script), and quotes every argument that needs quoting (``shlex``).
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
    environment from a fresh shell in any folder."""
    script = Path(sys.executable).parent / name
    if not (script.is_file() and os.access(script, os.X_OK)):
        return [_shown_path(Path(sys.executable)), "-m", MODULES.get(name, name)]
    return [_shown_path(script)]


def _shown_path(path: Path) -> str:
    """``path`` made absolute without resolving links (a venv's ``bin/python`` is a link to the
    base interpreter, which would lose the venv's packages); never bare or relative."""
    return os.path.abspath(path)


def command_line(name: str, *args: object) -> str:
    """``name args...`` as one shell line that runs as printed (see the module doc)."""
    return shlex.join([*executable(name), *(str(a) for a in args)])


def python_line(*args: object) -> str:
    """``python args...`` with the running interpreter (its absolute path), quoted."""
    return shlex.join([_shown_path(Path(sys.executable)), *(str(a) for a in args)])
