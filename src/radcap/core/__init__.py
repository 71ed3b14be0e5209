"""What every room uses: user errors, atomic contract-checked I/O, the typed settings, the data catalog, offline
defaults, console logs, saved model configs, the training loop and what people read (tables, figures)."""
