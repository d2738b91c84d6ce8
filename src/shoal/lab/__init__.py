"""Tools for proving Shoal across real NATs on one Linux machine (root only)."""
