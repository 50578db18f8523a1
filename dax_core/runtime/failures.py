"""Telling the cause of a worker group's failure from its consequences.

When one rank fails, its peers fail next: their collectives break (connection reset, timeout) and the launcher
terminates them. The owner hears all of it, in an order that races. The cause is, in this order of preference:
an exception that is not a communication failure; else a rank that dropped its connection without reporting an
error (killed, crashed, out of memory); else the earliest error. Ranks that said nothing at all are named too:
a collective that timed out was usually waiting for one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

# Signs of an error that only reflects a peer's failure (gloo and NCCL transport errors, collective timeouts).
_PEER_FAILURE_SIGNS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "timed out",
    "timeout",
    "/gloo/",
    "nccl",
    "watchdog",
)


@dataclass(frozen=True)
class RankEvent:
    rank: int
    who: str  # "rank 1 (pid 123 on host)"
    kind: str  # "error" (the rank reported an exception) or "drop" (its connection closed without one)
    at: float  # wall-clock seconds: when the rank raised (its clock), or when the owner saw the drop
    exception: str = ""
    message: str = ""
    traceback: str = ""

    @property
    def is_peer_failure(self) -> bool:
        text = f"{self.exception}: {self.message}".lower()
        return self.kind == "error" and any(sign in text for sign in _PEER_FAILURE_SIGNS)

    def describe(self, limit: int = 0) -> str:
        if self.kind == "drop":
            return f"{self.who} dropped its connection without reporting an error: it crashed or was killed"
        message = self.message if not limit or len(self.message) <= limit else self.message[:limit] + "..."
        return f"{self.who} raised {self.exception}: {message}"


def primary_event(events: list[RankEvent]) -> RankEvent:
    """The event that most likely caused the others."""
    errors = sorted((e for e in events if e.kind == "error" and not e.is_peer_failure), key=lambda e: e.at)
    if errors:
        return errors[0]
    drops = sorted((e for e in events if e.kind == "drop"), key=lambda e: e.at)
    if drops:
        return drops[0]
    return min(events, key=lambda e: e.at)


def explain(events: list[RankEvent], silent: list[str], doing: str, collective_timeout_s: float) -> str:
    """A report for the user: the cause first, what the other ranks then said, who stayed silent, a hint."""
    cause = primary_event(events)
    lines = [f"worker group failed{' ' + doing if doing else ''}: {cause.describe()}"]
    others = [e.describe(limit=200) for e in events if e is not cause and e.kind == "error"]
    if others:
        lines.append("other ranks then reported: " + "; ".join(others))
    if silent:
        lines.append(f"no word from {', '.join(silent)} (hung or stopped?)")
    if cause.is_peer_failure and "time" in cause.message.lower():
        lines.append(
            f"hint: a collective waited {collective_timeout_s:.0f} s for a rank that stopped making progress "
            "(hung, stopped, or much slower than the others)"
        )
    return "\n".join(lines)
