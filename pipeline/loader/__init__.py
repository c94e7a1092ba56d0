"""make_loader: the one resumable loader over every stream.

make.py (make_loader) · batch.py (BatchLoader: whole batches in the workers) · order.py (message order).
"""
