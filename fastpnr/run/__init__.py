"""the run folder: its files, metrics, progress display, TensorBoard/wandb, export."""
