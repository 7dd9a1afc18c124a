"""Bridges to other continual-learning libraries (each imported lazily; see its module)."""
