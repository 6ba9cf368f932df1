"""``tungsten lab``: a whole fabric on one machine in network namespaces.

``topology`` (parse and validate the file) and ``plan`` (names, addresses, API bodies) are
pure; ``state`` is the on-disk record; ``runner`` creates and removes things.
"""
