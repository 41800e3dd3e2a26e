"""``--help`` of the ``wsss`` command and of the sweep scripts: descriptions and examples keep
their line breaks (one command a line), and each option shows its default."""

from __future__ import annotations

import argparse
from typing import Any


class HelpFormatter(argparse.RawDescriptionHelpFormatter,
                    argparse.ArgumentDefaultsHelpFormatter):
    """Description and epilog as written (line breaks kept), and ``(default: X)`` after an
    option's help; left out when there is nothing to show (a default of None, False or an empty
    list: the option is off or unset) or when the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == [] or "default" in text:
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`HelpFormatter`; the parsers of its subcommands
    (``add_subparsers``) are of this class too, so they format their help the same way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
