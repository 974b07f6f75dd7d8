"""Hypothesis profiles shared by the test suite."""

from hypothesis import settings

settings.register_profile("ci", deadline=None, max_examples=200)
settings.load_profile("ci")
