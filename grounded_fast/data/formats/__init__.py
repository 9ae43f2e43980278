"""Readers for the real data formats, one module per format.

The public names are collected in :mod:`grounded_fast.data.loaders`; import from there.
Every reader validates its input and raises :class:`~grounded_fast.data.formats._io.DataFormatError`
(a ``ValueError``) whose message starts with ``path:line:`` (or ``path:`` when no line applies).
"""
