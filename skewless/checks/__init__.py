"""Checks that stop bad data before it reaches a store (schema now; drift etc. to come)."""
