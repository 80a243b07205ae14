"""The operator's loop: verdicts on alerts and device silences from the feedback topic."""
