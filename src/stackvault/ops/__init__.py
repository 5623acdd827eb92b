"""Use cases built on the repository engine and the data sources: stack backup, restore, export."""
