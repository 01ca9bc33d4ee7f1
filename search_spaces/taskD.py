"""Task D, B against C: fine-tuning vs the frozen feature extractor, per architecture and weights (no own trials)."""

COMPARE = ("taskB", "taskC")
