"""Learners: the tabular SARSA learner of the published experiment."""
