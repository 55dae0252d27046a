"""Environments: the tabular grid world (tasks are goal cells)."""
