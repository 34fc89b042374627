"""The package version, in a module of its own so that library modules (``bundle``) can record it
without importing the package's ``__init__``, which imports them."""

__version__ = "0.1.0"
