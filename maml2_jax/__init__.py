"""MAML² in JAX: meta-RL via meta-learning for task categories."""
