"""The shard build: units of work → shards → index.json, local or on Ray, under one output lock.

driver.py (plan, run, publish) · writer.py (records → parts) · engines.py (local processes) ·
ray_engine.py (many machines) · lock.py (one builder per output; the commit protocol).
"""
