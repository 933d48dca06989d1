"""Developer tooling: private services for `make run` and the test harness."""
