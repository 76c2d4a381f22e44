"""Building blocks shared by the request and event buses (python-mediator 0.7 paths)."""
