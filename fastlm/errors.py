"""fastlm's one family of exceptions.

Every error fastlm raises on purpose derives from :class:`FastLMError`, and also from the built-in class
that callers would expect (``ValueError``, ``TypeError``), so ``except ValueError`` keeps working.
"""


class FastLMError(Exception):
    """Base class of every error fastlm raises on purpose."""


class FastLMValueError(FastLMError, ValueError):
    """An argument has the right type but a value outside its valid range."""


class FastLMTypeError(FastLMError, TypeError):
    """An argument has the wrong type or dtype."""


class ModelFormatError(FastLMError, ValueError):
    """A model file or checkpoint is malformed, truncated or unsupported."""
