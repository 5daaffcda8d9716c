"""Where the CLI writes: results on stdout (text or JSON lines), messages,
errors and progress bars on stderr."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from otaflash.errors import OtaflashError


class Output:
    def __init__(self, *, json_mode: bool = False) -> None:
        self.json_mode = json_mode

    def result(self, text: str, record: dict[str, Any]) -> None:
        """One result: ``text`` for people, ``record`` as a JSON line with --json."""
        line = json.dumps(record, separators=(",", ":")) if self.json_mode else text
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def message(self, text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def error(self, error: OtaflashError, record: dict[str, Any] | None = None) -> None:
        """One line on stderr; with --json also a JSON line on stdout."""
        text = f"otaflash: error: {error}"
        if error.hint:
            text += f" ({error.hint})"
        self.message(text)
        if self.json_mode:
            self.result(
                text,
                {
                    **(record or {}),
                    "error": str(error),
                    "error_type": type(error).__name__,
                    "exit_code": error.exit_code,
                },
            )

    def wants_progress(self) -> bool:
        return sys.stderr.isatty()

    def detach_stdout(self) -> None:
        """After a broken pipe: point stdout at /dev/null so exit-time flushes stay quiet."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
