"""Evidence added to diverging rows: stale caches, referees, Jacobian probes and lints."""
