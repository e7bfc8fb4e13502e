"""Observing a run: events, log lines, live progress and the reports drawn
after it (JSON, Mermaid, the SVG timeline). Nothing here changes a run.

``events`` (the typed events), ``reporter`` (log lines, progress, the user's
hook), ``progress`` (the live line, heartbeats); after a run, ``report``
(JSON), ``mermaid`` and ``timeline`` (SVG), which read a run through
``runview``.
"""
