"""CEL access policies: ``default = "allow" | "deny"`` plus a list of rules.

Semantics (fail closed): with ``default = "deny"`` a request is allowed when some rule
is true; with ``default = "allow"`` it is denied when some rule is true. A rule that
errors at run time, or yields a non-boolean, denies. Rules compile at load; a rule
that does not compile is a configuration error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from angosd.config import AccessPolicyConfig
from angosd.expressions import cel


class PolicyError(Exception):
    """A rule that does not compile; the message names the rule's index and text."""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str


@dataclass(frozen=True)
class AccessPolicy:
    default_allow: bool
    rules: tuple[tuple[str, Any], ...]

    @classmethod
    def compile(cls, config: AccessPolicyConfig, where: str) -> AccessPolicy:
        """Compile every rule; raises `PolicyError` naming ``where`` and the rule."""
        compiled = []
        for index, rule in enumerate(config.rules):
            try:
                compiled.append((rule, cel().compile(rule)))
            except (ValueError, RuntimeError) as exc:
                detail = " ".join(str(exc).split())[:300]
                raise PolicyError(f"{where}.rules[{index}]: rule {rule!r} does not compile: {detail}") from None
        return cls(config.default == "allow", tuple(compiled))

    def decide(self, variables: Mapping[str, Any]) -> Decision:
        """Evaluate the rules over ``variables`` (``identity`` and ``request``)."""
        for text, program in self.rules:
            try:
                result = program.execute(dict(variables))
            except Exception as exc:
                return Decision(False, f"rule {text!r} failed: {type(exc).__name__}: {str(exc)[:200]}")
            if not isinstance(result, bool):
                return Decision(False, f"rule {text!r} gave a {type(result).__name__}, not a boolean")
            if result:
                return Decision(not self.default_allow, f"rule {text!r} matched")
        return Decision(self.default_allow, "no rule matched")


ALLOW_ALL = AccessPolicy(True, ())
