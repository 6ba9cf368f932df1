"""Security in the datapath: the pure evaluation core shared by every backend (``verdict``)."""
