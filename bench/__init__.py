"""End-to-end benchmarks of the engine on a real Apache Kafka broker: `python -m bench.run` (`make bench`)."""
