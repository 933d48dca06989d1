"""Berth node agent: the daemon that runs on every server.

It dials out to the control plane, receives the node's desired set of replicas and
converges the local container engine to it. It must stay importable without Django:
its only third-party requirements are in agent/requirements.txt.
"""

__version__ = "0.1.0"
