"""ninep: a 9P2000.L file server, client and library on trio."""

__version__ = "0.1.0"
