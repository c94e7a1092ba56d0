"""Corpus readers: input files (txt, jsonl, csv/tsv, parquet; plain, .gz, .zst) → records with file:line.

read.py (the readers by format) · spec.py (types, line accounting) · decode.py (checked
decompression, BOM, line breaks, byte ranges) · records.py (text and label rules) ·
csv_rows.py · txt.py · jsonl.py + jsonl_check.py (column-wise JSONL) · inputs.py (globs,
duplicates) · labels.py (--label-names, --label-map).
"""
