"""Evaluation: the registry of evaluated methods (``methods``), the statistics every comparison uses
(``stats``) and the report that turns per-task scores into the table and ``results.json`` (``report``)."""
