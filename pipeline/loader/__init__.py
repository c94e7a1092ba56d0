"""make_loader: the resumable DataLoader over a stream.

make.py (make_loader) · batch.py (BatchLoader: whole batches in the workers) · order.py (message order).
"""
