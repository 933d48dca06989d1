"""The test harness: private services (plugin.py), e2e hosts (hosts.py), the control plane
(controlplane.py), waiting with deadlines (waiting.py), and leftover cleanup (session.py)."""
