"""The experiments: the paper's table (``reproduce``), the frequent-shift benchmark (``stream_bench``,
``stream_tune``), the studies of the table's form (``compact``, ``severity``) and their reports.

They use the library and are driven by the CLI; the library never imports them.
"""
