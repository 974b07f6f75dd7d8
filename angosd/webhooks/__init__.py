"""Webhooks: the external authorization check and registry event delivery."""
