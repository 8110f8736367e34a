"""Models: a succeeded job's checkpoint, which one /predict uses, and its exports."""
