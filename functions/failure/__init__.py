"""Failure Lambda: a message that exhausted its retries ends as FAILED plus a site message."""
