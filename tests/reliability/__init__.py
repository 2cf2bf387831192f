"""Reliability and security tests: the real hub as a subprocess, real sockets, real files, real faults."""
