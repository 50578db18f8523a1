"""The cause of a group failure is told from its consequences, whatever order the reports arrive in."""

from __future__ import annotations

from dax_core.runtime.failures import RankEvent, explain, primary_event

GLOO_RESET = "[third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer"
GLOO_TIMEOUT = "[third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv"


def _error(rank: int, at: float, exception: str, message: str) -> RankEvent:
    return RankEvent(rank, f"rank {rank}", "error", at, exception, message, "Traceback ...")


def _drop(rank: int, at: float) -> RankEvent:
    return RankEvent(rank, f"rank {rank}", "drop", at)


def test_a_killed_rank_is_the_cause_even_when_its_peers_report_first():
    events = [_error(3, 1.0, "RuntimeError", GLOO_RESET), _error(1, 1.1, "RuntimeError", GLOO_RESET), _drop(2, 1.2)]
    assert primary_event(events).rank == 2
    report = explain(events, [], "while sampling", 600)
    assert report.startswith("worker group failed while sampling: rank 2 dropped its connection")
    assert "other ranks then reported: rank 3 raised RuntimeError" in report


def test_an_exception_beats_the_drops_and_resets_that_follow_it():
    events = [_drop(0, 0.5), _error(1, 2.0, "RuntimeError", GLOO_RESET), _error(3, 0.9, "ValueError", "bad shape")]
    assert primary_event(events).rank == 3


def test_the_earliest_of_two_real_exceptions_wins():
    events = [_error(1, 2.0, "ValueError", "late"), _error(0, 1.0, "KeyError", "early")]
    assert primary_event(events).rank == 0


def test_a_timeout_names_the_silent_rank_and_hints_at_a_hang():
    events = [_error(0, 1.0, "RuntimeError", GLOO_TIMEOUT)]
    report = explain(events, ["rank 1 (pid 42 on host)"], "", 5)
    assert "no word from rank 1 (pid 42 on host) (hung or stopped?)" in report
    assert "a collective waited 5 s" in report
