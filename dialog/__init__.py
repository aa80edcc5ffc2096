"""Dialog: the Rasa bot, its runtime (train/run) and caller-text normalization."""
