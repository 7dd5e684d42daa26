"""OpenGateway: a self-hosted, OpenAI-compatible gateway for image generation."""

__version__ = "0.1.0"
#: Every process logs lines in this shape (the CLI, the workers, the supervisor).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
