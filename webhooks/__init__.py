"""convert-webhooks: commerce-platform order webhooks in, Convert Experiences tracking out."""

__version__ = "0.1.0"
