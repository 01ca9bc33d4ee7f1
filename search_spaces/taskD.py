"""Task D, B against C: fine-tuning vs the frozen feature extractor, per architecture and weights (no trials of its own)."""

COMPARE = ("taskB", "taskC")
