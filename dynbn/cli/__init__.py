"""The ``dynbn`` command line: every sub-command, in the module of its topic.

``main`` (data, fit, reproduce), ``stream`` (stream-bench, tune-vote), ``studies``
(compact-tables, severity-tables), ``scenario`` (scenario run/list/check/video). This layer
parses options, calls the library, the experiments or the service, and prints.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
