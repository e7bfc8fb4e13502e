"""Small instruments shared by the concurrency tests."""

import threading


class Gauge:
    """Bodies in flight right now, and the most ever seen at once."""

    def __init__(self):
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __enter__(self):
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        return self

    def __exit__(self, *exc):
        with self._lock:
            self.now -= 1
