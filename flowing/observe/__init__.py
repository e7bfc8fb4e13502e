"""Observing a run: events, log lines, live progress and the reports drawn
after it (JSON, Mermaid, the SVG timeline). Nothing here changes a run.
"""
