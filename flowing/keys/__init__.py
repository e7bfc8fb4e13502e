"""Keys: what a step's identity is made of.

``digest`` turns values into content digests (a canonical encoding, like
``joblib.hash``); ``stepkey`` fingerprints what a body can reach (its code,
the helpers and constants it reads, what it imports) into the step's key.
Nothing here knows about journals or runs.

Step keys, from the bottom up: ``reach`` reads a code object (which names,
attribute chains and modules it reaches), ``nodes`` encodes one function or
class of the user, ``fingerprints`` walks the graph they form, and
``stepkey`` builds keys on top (``Keyer``, ``Behaviour``, and the policy).
"""
