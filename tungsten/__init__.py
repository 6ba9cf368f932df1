"""Tungsten: the Tungsten Fabric SDN rebuilt in Python, on a stock Linux kernel."""

__version__ = "0.1.0"
