"""Container images of the cloud side."""
