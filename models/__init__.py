"""repmon models: pure logic, one package per stage of the data flow.

    ingest -> classify -> state -> detect -> act        (sim writes traffic for all of them)

numpy and the standard library only; no Faust, Kafka, HTTP or Prometheus imports here. The
arrows are enforced by import-linter (``[tool.importlinter]`` in pyproject.toml): a stage may
import the stages below it and ``models.schema``, never one above it.
"""
