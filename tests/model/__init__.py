"""Model-based tests: Hypothesis state machines against a small reference model."""
