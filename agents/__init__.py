"""Faust agents and web views, found by the app's autodiscovery."""
