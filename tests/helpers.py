"""Small instruments shared by the concurrency tests."""

import logging
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


class ListHandler(logging.Handler):
    """Keeps every record it is given."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    @property
    def messages(self):
        return [r.getMessage() for r in self.records]

    lines = messages


class captured_log:
    """A logger of the test's own whose records are kept: ``with captured_log() as (logger,
    handler): Flow(..., log=logger)``."""

    _count = 0

    def __enter__(self):
        captured_log._count += 1
        self.logger = logging.getLogger(f"test.flowing.captured.{captured_log._count}")
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        self.handler = ListHandler()
        self.logger.addHandler(self.handler)
        return self.logger, self.handler

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
