"""The SageMaker inference container: its server and the demo model."""
