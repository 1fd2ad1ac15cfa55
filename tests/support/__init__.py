"""Plain modules the suites share: emulator runners, hostile APIs, the CDC upstream."""
