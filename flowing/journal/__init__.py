"""The journal: the append-only file of finished steps, and what sits beside it.

``store`` owns the file (its format, safety, locking, reads and rewrites);
``values`` keeps big values in files beside it; ``index`` keeps a SQLite index
so a big journal opens without a full scan.
"""
