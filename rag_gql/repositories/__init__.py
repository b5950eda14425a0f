"""Repositories: one per aggregate; each takes a session and never commits."""
