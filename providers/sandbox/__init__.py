"""A faithful, stateful stand-in for the providers' APIs; see server.py."""
