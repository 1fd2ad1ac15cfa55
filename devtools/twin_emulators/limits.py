"""The emulators' request budget: `requests` per rolling `seconds` per key (a client ID, a
token), as the platforms enforce theirs. Only admitted requests use the budget."""

from __future__ import annotations

from collections import deque

__all__ = ["RateLimiter"]


class RateLimiter:
    """`requests` per rolling `seconds` per key. Only admitted requests use the budget."""

    def __init__(self, requests: int, seconds: float) -> None:
        self.requests = requests
        self.seconds = seconds
        self._windows: dict[str, deque[float]] = {}

    def admit(self, key: str, now: float) -> float | None:
        """Take one slot at `now` and return None, or return the seconds until one frees."""
        window = self._windows.setdefault(key, deque())
        horizon = now - self.seconds
        while window and window[0] <= horizon:
            window.popleft()
        if len(window) >= self.requests:
            return window[0] - horizon
        window.append(now)
        return None

    def reset(self) -> None:
        self._windows.clear()
