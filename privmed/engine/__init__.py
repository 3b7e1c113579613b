"""Engines that carry protocol messages between the coordinator and the sites."""
