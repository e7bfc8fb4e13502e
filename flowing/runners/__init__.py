"""Runners: where and how one attempt of a body runs.

``attempt`` is the one catch-all boundary around a body (retries, timeouts,
gates, the verdict). ``base`` is what every runner shares: the ``Runner``
protocol, the run's ``Shared`` state, and ``report``, which journals a success
(the policy is ``replay.record``) and posts each outcome on the engine's inbox.
``local`` carries attempts to the run's threads, an event loop or a caller's
executor; ``remote`` to a process pool or a Dask cluster, through
``calls`` (the flow's side of a shipped call) and ``worker`` (what runs in the
worker process). ``shipping`` makes flowing and the script's modules
importable on Dask workers that lack them.
"""
