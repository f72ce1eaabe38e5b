"""The ``--help`` layout every ``python -m ddpm_lib`` command shares."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: …)" after each option's help, left off where it says nothing or says it twice:
    required options, defaults of None (the help text says what None means), on/off flags, and help
    texts that already name their default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        says_nothing = (action.required or action.nargs == 0                       # nargs 0: an on/off flag
                        or action.default is None or action.default is argparse.SUPPRESS)
        if says_nothing or "default" in text:
            return text
        return super()._get_help_string(action)
