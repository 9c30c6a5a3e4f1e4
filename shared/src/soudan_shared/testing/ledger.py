"""A fault test's ledger, in the categories of RabbitMQ's Jepsen checker.

``published``: ids a producer tried to send; ``confirmed``: ids the broker confirmed;
``consumed``: every delivery a handler saw (duplicates included); ``applied``: effects stored.
A correct system has lost = 0 (confirmed but never applied), unexpected = 0 (applied but never
published) and duplicate effects = 0 (an effect stored twice).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Ledger:
    published: set[str] = field(default_factory=set)
    confirmed: set[str] = field(default_factory=set)
    consumed: Counter[str] = field(default_factory=Counter)
    applied: Counter[str] = field(default_factory=Counter)

    @property
    def lost(self) -> set[str]:
        return self.confirmed - set(self.applied)

    @property
    def unexpected(self) -> set[str]:
        return set(self.applied) - self.published

    @property
    def duplicate_effects(self) -> set[str]:
        return {k for k, n in self.applied.items() if n > 1}

    @property
    def redeliveries(self) -> int:
        return sum(n - 1 for n in self.consumed.values() if n > 1)

    def summary(self) -> str:
        return (
            f"published={len(self.published)} confirmed={len(self.confirmed)} "
            f"consumed={sum(self.consumed.values())} applied={len(self.applied)} "
            f"lost={len(self.lost)} unexpected={len(self.unexpected)} "
            f"duplicate_effects={len(self.duplicate_effects)} redeliveries={self.redeliveries}"
        )
