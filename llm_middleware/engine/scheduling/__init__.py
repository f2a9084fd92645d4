"""Continuous batching policy as plain CPU state: sequences, requests, blocks, the scheduler, bursts, intake."""
