"""telemetry-hub: a durable Sunbird telemetry hub for school branches with poor internet."""

__version__ = "0.1.0"
