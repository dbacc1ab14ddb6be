"""The JSON-RPC surface of the node (SPEC §8): the method table, its handlers and the HTTP server."""
