"""repmon models: pure logic (classification, rolling windows, detectors, throttle policy).

numpy and the standard library only; no Faust, Kafka, HTTP or Prometheus imports here.
"""
