"""Root exception of the shared library; units translate it at their boundary."""


class PipelineError(Exception):
    """Base of every error the library raises on purpose.

    Messages must never carry PHI: name the attribute or the pseudonym, never a value
    read from a dataset before de-identification.
    """


class ContractError(PipelineError):
    """A message, manifest or object does not match the contract it claims."""


class IntegrityError(ContractError):
    """An object's checksum, size or encryption context does not match its manifest."""
