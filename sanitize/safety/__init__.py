"""Safety filtering: category specs, labels, classifiers, active-learning strategies and certified thresholds."""
