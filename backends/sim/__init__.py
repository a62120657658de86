"""Simulated SGLang embedding worker (``python -m backends.sim.worker``; reference in
`backends.sim.worker`) and its load generator (`backends.sim.loadgen`)."""
