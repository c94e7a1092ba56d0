"""The DDP training loop: ``torchrun --nproc_per_node 2 -m pipeline.train --train DATA --out RUN``.

loop.py (main) · config.py (options: the frozen TrainConfig) · data.py (the streams) · checkpoint.py +
checkpoint_files.py + resume.py · models.py · model_folder.py · evaluate.py · metrics.py · schedule.py ·
batches.py · audit_log.py · tensorboard.py · failure.py · quiet.py.
"""
