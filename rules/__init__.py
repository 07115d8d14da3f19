"""Pure trigger and guardrail logic.

Nothing in this package imports Faust, Kafka or Redis: it works on plain
dicts and integer epoch milliseconds, so the Faust agents and the offline
backtest run exactly the same code.
"""
