"""The command lines' argument parser: argparse with one-line errors."""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["Parser"]


class Parser(argparse.ArgumentParser):
    """argparse with the house's one-line errors: ``nlinit train: error: argument --epochs: ...`` (exit 2),
    instead of argparse's usage block followed by the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
