"""The ``shoal`` command line, built only on the public ``shoal.Node`` API."""
