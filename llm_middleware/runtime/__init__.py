"""Threads the package runs for itself: the CPU pool for request-sized work and loops on threads."""
