"""Shared fixtures: a controller process on a free loopback port."""
