"""Local-first groups: the post store, its reconciliation index and shared documents.

Nothing here is imported by ``import shoal``: a group's store loads ``sqlite3`` and its
documents load ``pycrdt``, which an app without groups never needs.
"""
