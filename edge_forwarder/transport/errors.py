"""Errors of the edge forwarder's transport; messages never carry PHI."""

from __future__ import annotations

from imaging_ai.errors import PipelineError


class ForwarderError(PipelineError):
    """Root of every error the edge forwarder raises on purpose."""


class ConfigError(ForwarderError):
    """The config file is missing, malformed, or a field is invalid (the message names it)."""


class TransientError(ForwarderError):
    """Worth retrying: network down, 5xx, PACS busy."""


class PermanentError(ForwarderError):
    """Retrying will not help: 4xx, refused association, a result that fails its checks."""


class ReidentificationError(PermanentError):
    """A result cannot be re-identified safely (unknown study, pseudonym left behind)."""
