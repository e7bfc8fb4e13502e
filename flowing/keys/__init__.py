"""Keys: what a step's identity is made of.

``digest`` turns values into content digests (a canonical encoding, like
``joblib.hash``); ``stepkey`` fingerprints what a body can reach (its code,
the helpers and constants it reads, what it imports) into the step's key.
Nothing here knows about journals or runs.
"""
