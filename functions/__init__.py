"""Lambda functions of the cloud side: preprocess, postprocess and failure handling."""
