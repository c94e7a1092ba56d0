"""LM packing: documents → fixed-length blocks with position and document ids, resumable.

stream.py (PackedStream, BlockCollator, lockstep) · cut.py (the block cutter) · read.py (document readers).
"""
