"""The SageMaker inference container: HTTP server, image definition, deployment and demo model."""
