"""Replay: the one owner of "replay this step or run it, and why".

It reads the journal, compares keys, says why a step runs (records in
``why``, turned into text at the edge), checks that values a key read were
not changed in place (``inplace``), and answers ``dry_run``.
"""
