"""Preprocess Lambda: a committed manifest becomes a model input and an async inference call."""
