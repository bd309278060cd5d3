"""Reliability and security suite: faults on the wire, kills, hostile input, secrets, load (issue 6)."""
