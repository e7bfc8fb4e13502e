"""Replay: the one owner of "replay this step or run it, and why", and of what a
run writes to the journal for its steps.

``policy`` builds a run's plan (``JournalPlan``: behaviours, keys, the rules of
replay); ``replayer`` applies it during the run (``Replayer``, asked by the
scheduler when a task is released, succeeds, fans out, and at the end);
``why`` holds the reasons as records, worded once by ``str()``; ``inplace``
checks that values a key read were not changed in place; ``dryrun`` answers
``Flow.dry_run``.
"""
