"""BatchNorm statistics: tables keyed like the model's ``state_dict`` (``table``), per-sample
statistics in one forward (``per_sample``) and compact forms of a table (``compact``)."""
