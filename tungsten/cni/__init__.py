"""The ``tungsten-cni`` plugin (``plugin``) and its pure request/result rules (``spec``).

Kept import-free: the plugin runs once per container operation and start-up is its cost.
"""
