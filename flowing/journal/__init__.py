"""The journal: the append-only file of finished steps, and what sits beside it.

``format`` owns the line format and the header; ``files`` which files are
journals and how they are opened, created and locked; ``scan`` reading the
lines; ``reader`` the index and the checked reads; ``commit`` the group
commit of appends; ``store`` the open ``Journal`` that ties them together;
``rewrite`` ``compact`` and ``forget``. ``values`` keeps big values in files
beside the journal; ``index`` keeps a SQLite index so a big journal opens
without a full scan.
"""
