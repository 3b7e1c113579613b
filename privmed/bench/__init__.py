"""The benchmark: every technique on the same data, model and machine; a report with the review's columns."""
