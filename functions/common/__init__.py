"""What the Lambda functions share: settings, observability, typed events and AWS adapters."""
