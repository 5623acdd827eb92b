"""The stack's declarative configuration (`stackvault.yaml`): schema, loader, example, docs."""
