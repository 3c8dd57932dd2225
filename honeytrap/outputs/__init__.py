"""Outputs to central stores (PostgreSQL, hpfeeds): a sink per store behind one batching writer
(writer.py) that falls back on the durable spool (honeytrap/spool.py) when the store is away."""
