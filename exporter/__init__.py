"""nodenet-exporter: why packets die on a node, as Prometheus metrics."""
__version__ = "0.1.0"
