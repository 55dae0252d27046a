"""Environments: the tabular grid world (tasks are goal cells) and 2-D point navigation (tasks are goal points)."""
