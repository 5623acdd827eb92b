"""StackVault: deduplicated, encrypted, verified backups of self-hosted AI/RAG stacks."""

__version__ = "0.1.0"
