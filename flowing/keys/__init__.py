"""Keys: what a step's identity is made of.

``digest`` turns values into content digests (a canonical encoding, like
``joblib.hash``); ``stepkey`` fingerprints what a body can reach (its code,
the helpers and constants it reads, what it imports) into the step's key.
Nothing here knows about journals or runs.

Digests, from the bottom up: ``usercode`` (whose code is it), ``encoding``
(the atoms), ``fast`` (the pickle-based fast path), ``special`` (buffers,
arrays, frames, dates...), ``canonical`` (the encoder), ``digest`` (the API).
Step keys: ``reach`` (what a code object reads), ``nodes`` (one function or
class of the user encoded), ``fingerprints`` (the walk over them),
``stepkey`` (``Keyer``, ``Behaviour`` and the policy).
"""
