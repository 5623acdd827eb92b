"""Data-source adapters behind one typed contract (see base.py); look them up in registry.py."""

from stackvault.sources.base import (
    ArtifactInfo,
    ArtifactSink,
    ArtifactSource,
    ComponentResult,
    DataSource,
    Fingerprint,
    ProbeResult,
)

__all__ = [
    "ArtifactInfo",
    "ArtifactSink",
    "ArtifactSource",
    "ComponentResult",
    "DataSource",
    "Fingerprint",
    "ProbeResult",
]
