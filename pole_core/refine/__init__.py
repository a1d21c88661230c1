"""Stage D: dense CRF, boundary-based affinity, random walk, export of the pseudo-masks."""
