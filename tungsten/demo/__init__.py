"""``tungsten demo``: a bundled lab and its reachability matrix, measured with real traffic.

``matrix`` is pure (what the topology and its policies say should happen, and why); ``run``
brings the lab up, starts listeners, probes every ordered pair of workloads and compares.
"""
