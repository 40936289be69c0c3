"""Evaluation of frozen encoders: metrics and linear probes (the evaluators and `mtv eval`
build on these)."""
