"""The classifier's exception kinds.

Exceptions from onnxruntime, tokenizers and the file system are translated into these
where they enter (chained with `from`), so the worker maps one small tree to its error
replies::

    ClassifierError
     ├── ModelDirError        a model directory is missing a file or holds bad metadata
     ├── LabelMappingError    config categories do not fit the model's labels
     ├── ProviderError        the requested execution provider could not be obtained
     └── BackendError         inference failed or produced unusable output
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "ClassifierError",
    "LabelMappingError",
    "ModelDirError",
    "ProviderError",
]


class ClassifierError(Exception):
    """Base of every error the classification engine raises on purpose."""


class ModelDirError(ClassifierError):
    """Raised when a model directory cannot be used; the message names the file and the fix."""


class LabelMappingError(ClassifierError, ValueError):
    """Raised when config categories cannot be mapped onto the model's labels.

    The message spells the config path (`categories[1].mmlu_categories[0]: ...`).
    """


class ProviderError(ClassifierError):
    """Raised when the GPU was required but the session runs on another provider."""


class BackendError(ClassifierError):
    """Raised when a forward pass fails or returns non-finite or misshaped logits."""
