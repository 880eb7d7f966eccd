"""Tasks (cohorts, labels, splits) and windowed feature matrices."""
