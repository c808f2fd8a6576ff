"""Fixtures for the toolkit's tests: the built default model, shared with the classifier's tests."""

from tests.services.classifier.conftest import domain_model_dir

__all__ = ["domain_model_dir"]
