"""Operator commands that change a deployment: key rotation, backup and restore."""
