"""The operator's manhole: a Python prompt inside the running node over SSH (keys) or loopback telnet.

``namespace`` holds the helpers (plain functions of the node, unit-tested without SSH); ``service``
the listeners and their checkers.
"""
