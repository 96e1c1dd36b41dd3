"""The select stage: which of the train stage's saved steps (models/steps) becomes models/lora."""
