"""Storage: locations on local disk or S3, and the self-describing trajectory dataset artifact."""

from ltdi_ray.storage.fs import Location, redact

__all__ = ["Location", "redact"]
