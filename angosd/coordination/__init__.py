"""Coordination between processes sharing one store."""
