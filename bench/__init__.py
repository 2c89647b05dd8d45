"""Load and latency benchmarks for convert-webhooks (see README.md)."""
