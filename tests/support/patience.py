"""How long a test may wait for something before it counts as a hang.

A wait returns as soon as what it waits for happens, so a generous bound costs nothing on a
quiet machine; on a busy one (two copies of the suite side by side) a tight one fails a test
that was only slow. Timing targets live in bench/, never here.
"""

PATIENCE_S = 600.0


def patience(asked: float) -> float:
    """The bound a wait actually uses: what the caller asked, or the patience if that is longer."""
    return max(asked, PATIENCE_S)
