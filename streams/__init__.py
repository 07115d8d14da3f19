"""Upsell Engine runtime: the Faust app, settings, topics, clock and tools."""
