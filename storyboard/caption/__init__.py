"""The caption stage: the user's pictures become the training dataset, one caption each (data/dataset)."""
