"""Inference backends: one class each, the same contract (``runtime.base.Backend``)."""
