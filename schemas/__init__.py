"""Event records, their validation and their published JSON Schemas."""
from .validate import SPECS, ValidationError, validate  # noqa: F401
