"""Questions on stdin, answers on stdout.

Secrets (passwords) are read with :func:`getpass.getpass` when stdin is a
terminal (no echo) and with a plain line read otherwise, so that scripts and
tests can feed answers through a pipe. Nothing read here is ever printed.
"""

from __future__ import annotations

import getpass
import sys
from typing import TextIO

from .api import ClientError


class EndOfInput(ClientError):
    """stdin closed while an answer was needed."""

    def __init__(self) -> None:
        super().__init__("No more input: the flow was abandoned.")


class Prompter:
    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None):
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        try:
            self.tty = self.stdin.isatty()
        except (AttributeError, ValueError):
            self.tty = False

    def say(self, message: str = "") -> None:
        self.stdout.write(message + "\n")
        self.stdout.flush()

    def warn(self, message: str) -> None:
        """A recoverable problem (wrong code, weak password …): shown, then asked again."""
        self.stdout.write(f"! {message}\n")
        self.stdout.flush()

    def _line(self, prompt: str) -> str:
        self.stdout.write(prompt)
        self.stdout.flush()
        line = self.stdin.readline()
        if line == "":
            self.stdout.write("\n")
            self.stdout.flush()
            raise EndOfInput()
        return line.rstrip("\r\n")

    def ask(self, prompt: str, default: str | None = None) -> str:
        """A visible answer, stripped; ``default`` on an empty line."""
        answer = self._line(prompt).strip()
        return answer if answer or default is None else default

    def ask_nonempty(self, prompt: str) -> str:
        while True:
            answer = self.ask(prompt)
            if answer:
                return answer
            self.warn("An answer is required.")

    def secret(self, prompt: str) -> str:
        """A password: no echo on a terminal; only the line ending is removed."""
        if self.tty:
            try:
                return getpass.getpass(prompt, stream=self.stdout)
            except EOFError:
                raise EndOfInput() from None
        return self._line(prompt)

    def new_password(self, prompt: str = "New password: ") -> str:
        while True:
            first = self.secret(prompt)
            if not first:
                self.warn("The password cannot be empty.")
                continue
            if self.secret("Repeat the password: ") != first:
                self.warn("The two passwords differ. Please try again.")
                continue
            return first

    def choose(self, title: str, options: list[str], default: int = 0) -> int:
        """A numbered menu; Enter picks ``default``. Returns the index."""
        if len(options) == 1:
            return 0
        self.say(title)
        for i, text in enumerate(options, 1):
            self.say(f"  {i}) {text}" + ("  [default]" if i - 1 == default else ""))
        while True:
            answer = self.ask(f"Choose 1-{len(options)} [{default + 1}]: ")
            if not answer:
                return default
            if answer.isdigit() and 1 <= int(answer) <= len(options):
                return int(answer) - 1
            self.warn(f"Please type a number from 1 to {len(options)}.")
