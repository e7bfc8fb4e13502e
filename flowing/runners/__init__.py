"""Runners: where and how one attempt of a body runs.

``attempt`` is the one catch-all boundary around a body (retries, timeouts,
gates, the verdict); the runners carry attempts to threads, an event loop, a
process pool or a Dask cluster and report each outcome back to the engine's
inbox. ``shipping`` makes flowing and the script's modules importable on
workers that lack them.
"""
