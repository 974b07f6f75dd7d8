"""The error a TLS file that cannot be used raises (importable without loading OpenSSL)."""

from __future__ import annotations

__all__ = ["TlsError", "one_line"]


class TlsError(Exception):
    """A TLS file cannot be used; the message is one line naming the file and the problem."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {one_line(problem)}")
        self.path = path
        self.problem = problem


def one_line(text: object) -> str:
    """``text`` on one line, runs of whitespace made single spaces."""
    return " ".join(str(text).split())
